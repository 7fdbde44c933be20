"""The seed's verbs as :class:`~sidecar.core.ops.Op` builders, for one (user, run).

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
resume_view            EVALSHA resume_view                    None
=====================  =====================================  =========================

Validation and serialization happen while building, before any I/O: a caller mistake is
recorded (outcome ``rejected``) and raised here, in every mode.

What is stored is the serialized JSON *sealed* (:mod:`sidecar.seal`: compressed, encrypted and
bound to the run and section); every reply is opened inside the call's budget, so a value that
does not authenticate raises :class:`~sidecar.errors.IntegrityError` there (outcome
``corrupt``). ``checkpoint_section_bytes`` keeps counting the serialized (logical) size,
``checkpoint_section_stored_bytes`` what Redis holds. A save with ``min_replicas`` /
``min_local_fsync`` carries WAIT / WAITAOF (:mod:`sidecar.core.durability`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sidecar import codec, lua
from sidecar.config import CheckpointConfig
from sidecar.core.calls import CallRecorder
from sidecar.core.durability import Durability, Replicated
from sidecar.core.ops import Command, Op, Sizes, script_call
from sidecar.core.packed import packed_pairs
from sidecar.errors import CheckpointError, NotReplicated
from sidecar.keys import RunKeys, run_keys, validate_section
from sidecar.models import ContextLike, Progress, ResumeView
from sidecar.seal import RunBinding, Sealer

T = TypeVar("T")
_ORDER = "o:"


def text(value: Any) -> str:
    """A reply element as str, whether the client decodes responses or not."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def parse_time(raw: Any) -> datetime | None:
    """Server TIME stored as "sec.usec" → an aware UTC datetime (exact, no float rounding)."""
    if raw is None or raw is False:
        return None
    sec, _, usec = text(raw).partition(".")
    return datetime.fromtimestamp(int(sec), UTC) + timedelta(microseconds=int(usec or 0))


def server_now(sec: Any, usec: Any) -> datetime:
    return datetime.fromtimestamp(int(text(sec)), UTC) + timedelta(microseconds=int(text(usec)))


def progress_from_meta(meta: dict[str, Any]) -> Progress:
    """The seed's progress shape from a run's meta hash (str field names)."""
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


def age_seconds(last: Any, now: datetime) -> float | None:
    return since(parse_time(last), now)


def since(saved: datetime | None, now: datetime) -> float | None:
    """Seconds from ``saved`` to ``now`` (never negative), None without a save."""
    return None if saved is None else max(0.0, (now - saved).total_seconds())


def _true(_: Any) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Scope:
    """One (user, run): its keys, its identifiers and, on a cluster, its hash slot."""

    keys: RunKeys
    ids: tuple[str, str]
    slot: int | None


def scope_for(
    config: CheckpointConfig, ctx: ContextLike, slot_of: Callable[[str], int | None]
) -> Scope:
    """Validate a context's identifiers (raises InvalidIdentifier) and build its scope."""
    user_id: str = getattr(ctx, "user_id", None)  # type: ignore[assignment]
    run_id: str = getattr(ctx, "run_id", None)  # type: ignore[assignment]
    keys = run_keys(config.key_prefix, user_id, run_id)
    return Scope(keys, (user_id, run_id), slot_of(keys.meta))


_IDENTITY = Sealer()
VALID_NAMES_KEPT = 64  # section names a manager remembers as validated


class Verbs:
    """Builds the op of each verb for one scope; the shells carry them out.

    ``sealer`` (the Checkpointer's, from its config) seals what is stored; without one, values
    are stored as serialized JSON (the identity form).
    """

    def __init__(
        self,
        scope: Scope,
        config: CheckpointConfig,
        recorder: CallRecorder,
        sealer: Sealer | None = None,
    ) -> None:
        self.scope = scope
        self.config = config
        self.recorder = recorder
        self.sealer = sealer if sealer is not None else _IDENTITY
        self.binding = RunBinding.of(config.key_prefix, *scope.ids)
        self._valid: set[str] = set()
        durability = Durability.from_config(config)
        self.durability = durability if durability.active else None

    def open(self, name: str, raw: Any, sizes: Sizes) -> bytes:
        """The serialized JSON of a stored value (IntegrityError when it does not open)."""
        sealer = self.sealer
        aad = self.binding.section(name) if sealer.decrypts else b""
        payload = sealer.open(raw, aad, name)
        sizes.logical += len(payload)
        sizes.stored += len(raw)
        return payload

    def op(self, operation: str, command: Command, nothing: T, **kw: Any) -> Op[T]:
        return Op(operation, command, self.scope.ids, self.scope.slot, nothing, **kw)

    def section(self, operation: str, section: object) -> str:
        """A validated section name; a bad one is recorded as ``rejected`` and raised. A run
        saves the same few names again and again: the valid ones are remembered."""
        if type(section) is str and section in self._valid:
            return section
        try:
            name = validate_section(section)
        except CheckpointError as exc:
            self.recorder.reject(operation, exc)
            raise
        if len(self._valid) < VALID_NAMES_KEPT:
            self._valid.add(name)
        return name

    def payload(self, operation: str, name: str, content: Any) -> bytes:
        """Serialized content; unserializable or too large content is recorded and raised."""
        try:
            return codec.dump(name, content, self.config.max_section_bytes)
        except CheckpointError as exc:
            self.recorder.reject(operation, exc, name)
            raise

    # --- the seed's verbs --------------------------------------------------------------------

    def save_section(
        self,
        name: str,
        payload: bytes,
        *,
        owner: str = "",
        fence: int = 0,
        next_section: str = "",
        parse: Callable[[Any], bool] = _true,
    ) -> Op[bool]:
        cfg = self.config
        sealer = self.sealer
        stored = payload if sealer.identity else sealer.seal(payload, self.binding.section(name))
        args = (name, stored, cfg.ttl_ms, owner, fence, cfg.lease_ttl_ms, next_section)
        wait = self.durability
        if wait is not None:

            def confirmed(reply: Any) -> bool:
                if not isinstance(reply, Replicated):  # a store that sent no WAIT
                    return parse(reply)
                result = parse(reply.reply)  # a lease refusal raises first
                if not reply.replication.confirmed:
                    raise NotReplicated(
                        f"save_section: saved on the primary, not confirmed: "
                        f"{reply.replication.detail}"
                    )
                return result

        command = script_call(lua.SAVE_SECTION, self.scope.keys.all, args, wait)
        return self.op(
            "save_section", command, False, parse=parse if wait is None else confirmed,
            section=name, sizes=Sizes(len(payload), len(stored)), event="saved",
        )  # fmt: skip

    def load_section(self, name: str, model: Any = None) -> Op[Any]:
        keys, cfg = self.scope.keys, self.config
        command = (
            script_call(lua.LOAD_SECTION_REFRESH, keys.all[:2], (name, cfg.ttl_ms))
            if cfg.refresh_ttl_on_read
            else Command("HGET", (keys.sections,), (name,))
        )

        sizes = Sizes()

        def parse(raw: Any) -> Any:
            if raw is None:
                return None
            return codec.load(name, self.open(name, raw, sizes), model)

        return self.op(
            "load_section", command, None, parse=parse, section=name, sizes=sizes,
            event="loaded", event_if=_loaded,
        )  # fmt: skip

    def load_all_sections(self, model: Any = None) -> Op[dict[str, Any]]:
        cfg = self.config
        command = (
            script_call(lua.LOAD_ALL_REFRESH, self.scope.keys.all[:2], (cfg.ttl_ms,))
            if cfg.refresh_ttl_on_read
            else script_call(lua.LOAD_ALL, self.scope.keys.all[:2])
        )

        sizes = Sizes()
        op_name = "load_all_sections"

        def parse(reply: Any) -> dict[str, Any]:
            return {
                name: codec.load(name, self.open(name, raw, sizes), model)
                for name, raw in packed_pairs(reply)
            }

        empty: dict[str, Any] = {}
        return self.op(
            op_name, command, empty, parse=parse, sizes=sizes,
            event="loaded", event_if=bool,
        )  # fmt: skip

    def get_progress(self) -> Op[Progress]:
        def parse(meta: Any) -> Progress:
            if not meta:
                return Progress()
            return progress_from_meta({text(k): v for k, v in meta.items()})

        return self.op(
            "get_progress", Command("HGETALL", (self.scope.keys.meta,)), Progress(), parse=parse
        )

    def has_checkpoints(self) -> Op[bool]:
        return self.op(
            "has_checkpoints", Command("EXISTS", (self.scope.keys.sections,)), False, parse=bool
        )

    def get_checkpoint_age(self) -> Op[float | None]:
        def parse(reply: Any) -> float | None:
            if not reply or not reply[0]:
                return None
            return age_seconds(reply[0], server_now(reply[1], reply[2]))

        command = script_call(lua.CHECKPOINT_AGE, self.scope.keys.all[:2])
        return self.op("get_checkpoint_age", command, None, parse=parse)

    def cleanup(self) -> Op[bool]:
        return self.op(
            "cleanup", Command("UNLINK", self.scope.keys.all), False, parse=_true,
            event="cleaned",
        )  # fmt: skip

    def resume_view(self, model: Any = None) -> Op[ResumeView | None]:
        """Sections in completion order, progress and age in one call; None without a run."""

        sizes = Sizes()

        def parse(reply: Any) -> ResumeView | None:
            flat, meta_packed, sec, usec = reply
            meta = dict(packed_pairs(meta_packed))
            if not flat and not meta:
                return None
            sections = {
                name: codec.load(name, self.open(name, raw, sizes), model)
                for name, raw in packed_pairs(flat)
            }
            progress = progress_from_meta(meta) if meta else Progress()
            return ResumeView(
                sections=sections,
                progress=progress,
                age_seconds=since(progress.last_update, server_now(sec, usec)),
            )

        command = script_call(lua.RESUME_VIEW, self.scope.keys.all[:2])
        return self.op(
            "resume_view", command, None, parse=parse, event="loaded",
            event_if=_present, sizes=sizes,
        )  # fmt: skip


def _loaded(value: Any) -> bool:
    return value is not None


def _present(view: ResumeView | None) -> bool:
    return view is not None
