"""What the async and the sync shell share, written once: the pieces of a Checkpointer, a
manager and a run that do no I/O. Each shell subclasses these and adds only the methods that
send a command and wait (``async def`` in :mod:`sidecar.checkpointer`, plain ``def`` in
:mod:`sidecar.sync.checkpointer`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, Self, TypeVar, cast

from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry

from sidecar.budget import CircuitBreaker
from sidecar.config import CheckpointConfig
from sidecar.core.calls import CallRecorder, Scheduler
from sidecar.core.ops import Op
from sidecar.core.runstate import RunState, RunView
from sidecar.core.verbs import Verbs, scope_for
from sidecar.errors import CheckpointError
from sidecar.models import CheckpointEvent, ContextLike
from sidecar.store import server_address
from sidecar.telemetry import Instrumentation

T = TypeVar("T")
M = TypeVar("M")
R = TypeVar("R")
EventListener = Callable[[CheckpointEvent], Any]
logger = logging.getLogger("sidecar")


def configured(url: str | None, config: CheckpointConfig | None) -> CheckpointConfig:
    """The config of ``from_url``: ``config`` (or the environment's) with ``url`` if given."""
    cfg = config if config is not None else CheckpointConfig()
    if url is not None:
        cfg = cfg.model_copy(update={"redis_url": url})
        type(cfg).model_validate(cfg.model_dump())  # re-check the new URL
    return cfg


class CheckpointerBase(Generic[M, R]):
    """Construction, config, telemetry, breakers, the outcome policy of an op, and the
    factories of managers and runs. A shell names its classes (``manager_class``,
    ``run_class``, ``store_class``), its breaker-cooldown timer (``schedule``) and whether
    threads share it (``shared_by_threads``: a lock around the breakers), and builds clients
    (:meth:`build_client`).

    ``redis`` stays the caller's (closed only when built by :meth:`from_url`, or with
    ``close_client=True``). ``registry`` and ``tracer_provider`` default to
    prometheus_client's and OpenTelemetry's global ones; pass your own to keep figures apart.
    """

    manager_class: Any
    run_class: Any
    store_class: Any
    schedule: Scheduler
    shared_by_threads = False

    def __init__(
        self,
        redis: Any,
        config: CheckpointConfig | None = None,
        *,
        registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        on_event: EventListener | None = None,
        close_client: bool = False,
        **store_options: Any,
    ) -> None:
        self.config = config if config is not None else CheckpointConfig()
        self.store = self.store_class(redis, **store_options)
        self._close_client = close_client
        self.telemetry = Instrumentation(
            registry=registry,
            tracer_provider=tracer_provider,
            budget_seconds=self.config.budget_seconds,
            server=server_address(redis),
            trace_identifiers=self.config.trace_identifiers,
        )
        lock = threading.RLock() if self.shared_by_threads else None
        self.calls = CallRecorder(
            self.config, self.telemetry, self.store.shard, type(self).schedule, lock
        )
        self.on_event = on_event
        self._budget = self.config.budget_seconds
        self.check_client(redis)

    @classmethod
    def from_url(
        cls,
        url: str | None = None,
        *,
        config: CheckpointConfig | None = None,
        cluster: bool | None = None,
        registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        on_event: EventListener | None = None,
    ) -> Self:
        """Build a checkpointer and its client (no I/O: connections open on first use).

        ``url`` defaults to ``config.redis_url``. ``cluster=True`` or a ``redis+cluster://``
        URL builds a ``RedisCluster`` client. Redis-py's own retries are off and the budget,
        not a socket timeout, bounds every call.
        """
        cfg = configured(url, config)
        client, options = cls.build_client(cfg.redis_url, cfg.is_cluster if cluster is None
                                           else cluster)  # fmt: skip
        return cls(
            client, cfg, registry=registry, tracer_provider=tracer_provider,
            on_event=on_event, close_client=True, **options,
        )  # fmt: skip

    @classmethod
    def build_client(cls, url: str, cluster: bool) -> tuple[Any, dict[str, Any]]:
        """The shell's client for ``from_url``, and options for its store."""
        raise NotImplementedError

    def check_client(self, redis: Any) -> None:
        """Warn about a client that cannot keep the budget (the shell knows which)."""

    def manager(self, ctx: ContextLike) -> M:
        """The seed's per-context manager (validates the identifiers now)."""
        return cast(M, self.manager_class(self, ctx))

    def run(self, ctx: ContextLike, plan: Sequence[str] | None = None) -> R:
        """A resumable run of ``ctx`` (``async with`` / ``with`` it)."""
        return cast(R, self.run_class(self.manager(ctx), plan))

    def attach(
        self, ctx: ContextLike, *, owner: str, fencing_token: int,
        plan: Sequence[str] | None = None,
    ) -> R:  # fmt: skip
        """A run acquired earlier (by another request of a server, say), by its owner token
        and fencing token: its saves, renewals and finish are fenced exactly as the original's.
        """
        run = self.run_class(self.manager(ctx), plan, owner=owner, fencing_token=fencing_token)
        return cast(R, run)

    @property
    def breaker(self) -> CircuitBreaker:
        """The breaker of a single server (on a cluster: of calls made before discovery)."""
        return self.calls.breaker

    def breaker_for(self, slot: int) -> CircuitBreaker:
        return self.calls.breaker_for(slot)

    def reject(self, operation: str, error: CheckpointError, section: str | None = None) -> None:
        """Record a caller mistake (outcome ``rejected``); the caller then raises it."""
        self.calls.reject(operation, error, section)

    def settle(
        self, op: Op[T], started: float, result: T | None, error: CheckpointError | None
    ) -> T:
        """An op's answer: its result (emitting its event), or on an outage its "nothing"
        (best effort) or the error (strict mode, or an op that always raises)."""
        if error is not None:
            if self.config.strict or op.always_raise:
                raise error
            return op.nothing
        if op.event is not None and self.on_event is not None and op.event_if(result):
            user, run = op.ids
            duration = time.perf_counter() - started
            self.emit(CheckpointEvent(op.event, user, run, op.section, duration))
        return cast(T, result)

    def emit(self, event: CheckpointEvent) -> None:
        """Deliver an event to ``on_event``; a listener that raises is logged, never propagated."""
        listener = self.on_event
        if listener is None:
            return
        try:
            result = listener(event)
        except Exception:
            logger.exception("checkpoint event listener raised; the operation is unaffected")
            return
        self.listener_returned(result)

    def listener_returned(self, result: Any) -> None:
        """What a listener returned (a shell that can await schedules an awaitable)."""


class ManagerBase:
    """A manager's identity: its run's scope, keys and ops builder."""

    def __init__(self, checkpointer: CheckpointerBase[Any, Any], ctx: ContextLike) -> None:
        scope = scope_for(checkpointer.config, ctx, checkpointer.store.slot)
        self.verbs = Verbs(scope, checkpointer.config, checkpointer.calls)
        self.keys = scope.keys
        self.user_id, self.run_id = scope.ids
        self.slot = scope.slot  # its shard's breaker, on a cluster

    def save_op(self, section: object, content: Any) -> Op[bool]:
        verbs = self.verbs
        name = verbs.section("save_section", section)
        return verbs.save_section(name, verbs.payload("save_section", name, content))

    def load_op(self, section: object, model: Any) -> Op[Any]:
        return self.verbs.load_section(self.verbs.section("load_section", section), model)


class RunBase(RunView, Generic[M]):
    """An attempt's state and what both run shells decide without I/O."""

    def __init__(
        self,
        manager: M,
        plan: Sequence[str] | None = None,
        *,
        owner: str | None = None,
        fencing_token: int = 0,
    ) -> None:
        self.manager = manager
        cp = manager.checkpointer  # type: ignore[attr-defined]
        self._state = RunState(
            manager.verbs, cp.telemetry.metrics,  # type: ignore[attr-defined]
            list(plan) if plan else None, owner=owner, fencing_token=fencing_token,
        )  # fmt: skip

    def entered(self, error: CheckpointError | None, strict: bool) -> Self:
        """After the first acquire: raise its outage (strict), or start unconfirmed."""
        if error is not None:
            if strict:
                raise error
            # it may have landed: then the lease is ours without our knowing; the next step's
            # acquire confirms it (same owner), and leaving the block releases it either way
            logger.warning("run starts unconfirmed (nothing restored yet): %s", error)
        self._state.started()
        return self

    def confirmed_now(self, started: float) -> bool:
        """True once after an acquire succeeded (the shell then starts renewing the lease);
        emits the ``resumed`` event of a run that restored sections."""
        state = self._state
        if not state.just_confirmed:
            return False
        state.just_confirmed = False
        if state.resumed:
            mgr: Any = self.manager
            mgr.checkpointer.emit(CheckpointEvent(
                "resumed", mgr.user_id, mgr.run_id, None, time.perf_counter() - started
            ))  # fmt: skip
        return True
