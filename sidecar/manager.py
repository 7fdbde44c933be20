"""CheckpointManager: the seed's verbs for one (user, run), each one Redis command.

=====================  =====================================  =========================
verb                   command                                best-effort "nothing"
=====================  =====================================  =========================
save_section           EVALSHA save_section                   False
load_section           HGET (EVALSHA with refresh_ttl_on_read) None
load_all_sections      EVALSHA load_all_sections              {}
get_progress           HGETALL meta                           Progress()
has_checkpoints        EXISTS sections                        False
get_checkpoint_age     EVALSHA get_checkpoint_age             None
cleanup                UNLINK sections meta lease             False
=====================  =====================================  =========================

Caller mistakes raise in every mode; outages raise only with ``strict=True``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sidecar import codec, lua
from sidecar.errors import CheckpointError, LeaseLost
from sidecar.keys import RunKeys, run_keys, validate_section
from sidecar.models import CheckpointEvent, ContextLike, EventKind, Progress

if TYPE_CHECKING:
    from sidecar.checkpointer import Checkpointer

T = TypeVar("T")
_ORDER = "o:"


def text(value: Any) -> str:
    """A reply element as str, whether the client decodes responses or not."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def flat_pairs(flat: list[Any]) -> list[tuple[str, Any]]:
    """A flat [name, value, ...] script reply as (str name, value) pairs, in reply order."""
    return [(text(flat[i]), flat[i + 1]) for i in range(0, len(flat) - 1, 2)]


def parse_time(raw: Any) -> datetime | None:
    """Server TIME stored as "sec.usec" → an aware UTC datetime (exact, no float rounding)."""
    if raw is None or raw is False:
        return None
    sec, _, usec = text(raw).partition(".")
    return datetime.fromtimestamp(int(sec), UTC) + timedelta(microseconds=int(usec or 0))


def progress_from_meta(meta: dict[str, Any]) -> Progress:
    order = sorted(
        ((int(text(pos)), field[len(_ORDER) :]) for field, pos in meta.items()
         if field.startswith(_ORDER)),
    )  # fmt: skip
    completed = [name for _, name in order]
    total = int(text(meta.get("total", 0)))
    in_progress = meta.get("ip")
    return Progress(
        completed_sections=completed,
        in_progress=text(in_progress) if in_progress is not None else None,
        total_sections=total or len(completed),
        last_update=parse_time(meta.get("t")),
    )


class CheckpointManager:
    """Checkpoints of one user execution context. Cheap to create; safe to share across tasks."""

    def __init__(self, checkpointer: Checkpointer, ctx: ContextLike) -> None:
        self._cp = checkpointer
        self.user_id: str = getattr(ctx, "user_id", None)  # type: ignore[assignment]
        self.run_id: str = getattr(ctx, "run_id", None)  # type: ignore[assignment]
        self.keys: RunKeys = run_keys(checkpointer.config.key_prefix, self.user_id, self.run_id)
        self._ids = (self.user_id, self.run_id)
        self.slot = checkpointer.store.slot(self.keys.meta)  # its shard's breaker, on a cluster

    @property
    def checkpointer(self) -> Checkpointer:
        return self._cp

    # --- plumbing ----------------------------------------------------------------------------

    async def _do(
        self,
        operation: str,
        db_operation: str,
        call: Callable[[], Awaitable[T]],
        nothing: Any,
        *,
        section: str | None = None,
        nbytes: int | None = None,
        measure: Callable[[Any], int | None] | None = None,
    ) -> Any:
        result, error = await self._cp.execute(
            operation, db_operation, call, ids=self._ids, slot=self.slot, section=section,
            nbytes=nbytes, measure=measure,
        )  # fmt: skip
        if error is not None:
            if self._cp.config.strict:
                raise error
            return nothing
        return result

    def _section(self, operation: str, section: object) -> str:
        try:
            return validate_section(section)
        except CheckpointError as exc:
            self._cp.reject(operation, exc)
            raise

    def _event(self, kind: EventKind, section: str | None, started: float) -> None:
        if self._cp.on_event is not None:
            self._cp.emit(
                CheckpointEvent(kind, self.user_id, self.run_id, section,
                                time.perf_counter() - started)
            )  # fmt: skip

    # --- the seed's verbs --------------------------------------------------------------------

    async def save_section(self, section: str, content: Any) -> bool:
        """Store one finished section atomically with the progress update and TTL refresh.

        True when Redis confirmed the write. False (best-effort mode) means "not confirmed":
        the write may still land; saves are idempotent, so that is harmless.
        """
        return await self._save(section, content, owner="", fence=0)

    async def _save(self, section: str, content: Any, *, owner: str, fence: int) -> bool:
        op = "save_section"
        name = self._section(op, section)
        cfg = self._cp.config
        try:
            payload = codec.dump(name, content, cfg.max_section_bytes)
        except CheckpointError as exc:
            self._cp.reject(op, exc, name)
            raise
        started = time.perf_counter()
        args = (name, payload, cfg.ttl_ms, owner, fence, cfg.lease_ttl_ms)

        async def call() -> bool:
            reply = await self._cp.store.run_script(lua.SAVE_SECTION, self.keys.all, args)
            if reply != 1:
                raise LeaseLost(
                    f"save of {name!r} refused: the run's lease belongs to another attempt "
                    f"({text(reply[1])})"
                )
            return True

        ok = bool(await self._do(op, "EVALSHA", call, False, section=name, nbytes=len(payload)))
        if ok:
            self._event("saved", name, started)
        return ok

    async def load_section(self, section: str, model: Any = None) -> Any:
        """The stored JSON value of ``section`` (or a ``model`` instance); None when absent."""
        op = "load_section"
        name = self._section(op, section)
        cfg = self._cp.config
        store = self._cp.store
        started = time.perf_counter()
        call: Callable[[], Awaitable[Any]]
        if cfg.refresh_ttl_on_read:
            keys, ttl = self.keys, cfg.ttl_ms

            def call() -> Awaitable[Any]:
                return store.run_script(lua.LOAD_SECTION_REFRESH, keys.all[:2], (name, ttl))

            db_op = "EVALSHA"
        else:
            key = self.keys.sections

            def call() -> Awaitable[Any]:
                return store.hget(op, key, name)

            db_op = "HGET"
        raw = await self._do(op, db_op, call, None, section=name, measure=_size)
        if raw is None:
            return None
        value = codec.load(name, raw, model)
        self._event("loaded", name, started)
        return value

    async def load_all_sections(self, model: Any = None) -> dict[str, Any]:
        """Every stored section, in completion order (one EVALSHA)."""
        sections = await self._load_all("load_all_sections")
        if not sections:
            return {}
        return {name: codec.load(name, raw, model) for name, raw in sections}

    async def _load_all(self, op: str) -> list[tuple[str, Any]]:
        cfg = self._cp.config
        started = time.perf_counter()
        script = lua.LOAD_ALL_REFRESH if cfg.refresh_ttl_on_read else lua.LOAD_ALL
        args: tuple[int, ...] = (cfg.ttl_ms,) if cfg.refresh_ttl_on_read else ()
        keys = self.keys.all[:2]
        store = self._cp.store
        reply = await self._do(
            op, "EVALSHA", lambda: store.run_script(script, keys, args), None, measure=_reply_size
        )
        if not reply:
            return []
        self._event("loaded", None, started)
        return flat_pairs(reply)

    async def get_progress(self) -> Progress:
        """The seed's progress shape (one HGETALL)."""
        store, key = self._cp.store, self.keys.meta
        meta = await self._do(
            "get_progress", "HGETALL", lambda: store.hgetall("get_progress", key), None
        )
        if not meta:
            return Progress()
        return progress_from_meta({text(k): v for k, v in meta.items()})

    async def has_checkpoints(self) -> bool:
        """True when at least one section is stored (one EXISTS)."""
        store, key = self._cp.store, self.keys.sections
        return bool(
            await self._do(
                "has_checkpoints", "EXISTS", lambda: store.exists("has_checkpoints", key), False
            )
        )

    async def get_checkpoint_age(self) -> float | None:
        """Seconds since the last save, by the Redis server's clock; None without checkpoints."""
        store, keys = self._cp.store, self.keys.all[:2]
        reply = await self._do(
            "get_checkpoint_age", "EVALSHA",
            lambda: store.run_script(lua.CHECKPOINT_AGE, keys, ()), None,
        )  # fmt: skip
        if not reply or not reply[0]:
            return None
        last = parse_time(reply[0])
        now = datetime.fromtimestamp(int(text(reply[1])), UTC) + timedelta(
            microseconds=int(text(reply[2]))
        )
        assert last is not None
        return max(0.0, (now - last).total_seconds())

    async def cleanup(self) -> bool:
        """Delete every key of the run (one UNLINK). True when Redis confirmed."""
        store, keys = self._cp.store, self.keys.all
        started = time.perf_counter()
        result = await self._do("cleanup", "UNLINK", lambda: store.unlink("cleanup", *keys), None)
        if result is None:
            return False
        self._event("cleaned", None, started)
        return True


def _size(raw: Any) -> int | None:
    return len(raw) if raw is not None else None


def _reply_size(reply: Any) -> int | None:
    if not reply:
        return None
    return sum(len(reply[i]) for i in range(1, len(reply), 2)) or None
