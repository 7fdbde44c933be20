"""``Sidecar``: the expiry watcher and the HTTP endpoint running in the current event loop.

Used by ``checkpoint-sidecar serve`` and by applications (the demo) that want the sidecar in
process::

    async with Sidecar(redis_url="redis://127.0.0.1:6379/0", port=0) as sc:
        print(sc.metrics_url, sc.expiries)

``start(wait=False)`` (what ``serve`` does) binds and serves HTTP at once and leaves Redis to
the watcher, which connects in the background with backoff: Redis down never takes the
sidecar's ``/metrics`` down. Entering the context manager (``start()``) also waits, up to
``connect_timeout``, until the watcher is in its role (counting, or standing by in a fleet).
Leaving stops accepting requests, hands the counting slot back, unsubscribes and closes Redis.
Signals are the caller's business: uvicorn's own signal handling is disabled here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import uvicorn
from prometheus_client import CollectorRegistry

from sidecar.config import CheckpointConfig, redact_url
from sidecar.server.app import make_app
from sidecar.server.fleet import DEFAULT_SLOTS, FleetWatcher
from sidecar.server.metrics import build_registry
from sidecar.server.reaper import DeadAgentReaper
from sidecar.server.watcher import WatcherState

log = logging.getLogger("sidecar.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9464


class SidecarStartError(RuntimeError):
    """The sidecar could not start: Redis unreachable, port taken, bad setting. One line."""


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the owner of the event loop decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Sidecar:
    """Expiry watcher + ``/metrics`` ``/healthz`` ``/readyz`` as an async context manager.

    ``redis_url`` and ``key_prefix`` default to :class:`~sidecar.CheckpointConfig` (so to the
    ``SIDECAR_*`` environment). ``port=0`` binds a free port (see :attr:`port`).
    ``multiproc_dir`` adds the metrics of every agent process writing into that directory (and
    drops the live gauges of those that are gone, every ``reap_interval`` seconds).
    ``registry``: serve and extend this registry instead of a fresh one. ``watcher_slots``: how
    many sidecars per Redis count expiries (see :mod:`sidecar.server.fleet`).
    ``connect_timeout``: how long :meth:`start` waits for the watcher (``wait=True``);
    ``redis_timeout``: how long one connection attempt or command to Redis may take.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        key_prefix: str | None = None,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        multiproc_dir: str | Path | None = None,
        registry: CollectorRegistry | None = None,
        connect_timeout: float = 30.0,
        health_interval: float = 1.0,
        redis_timeout: float = 2.0,
        watcher_slots: int = DEFAULT_SLOTS,
        slot_ttl: float = 3.0,
        reap_interval: float = 5.0,
    ) -> None:
        overrides: dict[str, Any] = {}
        if redis_url is not None:
            overrides["redis_url"] = redis_url
        if key_prefix is not None:
            overrides["key_prefix"] = key_prefix
        config = CheckpointConfig(**overrides)
        self.config = config
        self.host = host
        self.connect_timeout = connect_timeout
        # redis+cluster://: a subscription per node, replicas as standbys (while counting)
        self.watcher = FleetWatcher(
            config.redis_url, config.key_prefix, cluster=config.is_cluster,
            slots=watcher_slots, slot_ttl=slot_ttl, health_interval=health_interval,
            connect_timeout=redis_timeout,
        )  # fmt: skip
        self.reaper = (
            DeadAgentReaper(multiproc_dir, reap_interval) if multiproc_dir is not None else None
        )
        try:
            self.registry = build_registry(
                self.watcher.state, multiproc_dir=multiproc_dir, registry=registry,
                reaper=self.reaper,
            )  # fmt: skip
        except OSError as exc:
            raise SidecarStartError(
                f"multiprocess directory {multiproc_dir}: {exc.strerror or exc}"
            ) from None
        self.multiproc_dir = multiproc_dir
        self._requested_port = port
        self._stopping = False
        self._socket: socket.socket | None = None
        self._server: _Server | None = None
        self._server_task: asyncio.Task[None] | None = None
        self._watcher_task: asyncio.Task[None] | None = None
        self._reaper_task: asyncio.Task[None] | None = None
        self._components: dict[str, Callable[[], bool]] = {}

    def add_component(self, name: str, running: Callable[[], bool]) -> None:
        """Have ``/healthz`` report ``name`` as stopped once ``running()`` turns False while
        the sidecar is not stopping (the HTTP API's thread, say: it runs beside this loop,
        so no task of ours ends when it dies). ``running`` is called on every probe."""
        self._components[name] = running

    def remove_component(self, name: str) -> None:
        self._components.pop(name, None)

    # --- what callers read ------------------------------------------------------------
    @property
    def state(self) -> WatcherState:
        return self.watcher.state

    @property
    def expiries(self) -> int:
        """Runs of this key prefix counted as expired so far."""
        return self.watcher.state.ttl_expiries

    @property
    def lease_expiries(self) -> int:
        return self.watcher.state.lease_expiries

    @property
    def port(self) -> int:
        """The bound HTTP port (the real one when ``port=0`` was asked)."""
        if self._socket is None:
            return self._requested_port
        port: int = self._socket.getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.base_url}/metrics"

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, details)`` as ``/readyz`` reports it.

        Ready means serving: HTTP bound and the process healthy (see :meth:`liveness`). Redis is
        reported, not required: ``/readyz`` gates the whole agent pod, and a Redis blip must not
        take every agent pod out of its Service.
        """
        s = self.watcher.state
        alive, _ = self.liveness()
        details: dict[str, Any] = {
            "redis": "up" if s.redis_up else "down",
            "watcher": _watcher_status(s),
            "expiry_events": s.expiry_events,
        }
        if s.slot is not None:
            details["slot"] = s.slot
        problem = s.failed or s.refused or (None if s.watching else s.last_error)
        if problem:
            details["error"] = problem
        ready = alive and self._server is not None and self._server.started
        return ready, details

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """``(alive, details)`` as ``/healthz`` reports it: False only when the process is
        wedged — a background task (watcher, reaper) or a component (the HTTP API) ended
        although nothing stopped it."""
        if self._stopping:
            return True, {}
        tasks = (self._watcher_task, self._reaper_task)
        dead = [t.get_name() for t in tasks if t is not None and t.done()]
        dead += [name for name, running in self._components.items() if not running()]
        if dead:
            return False, {"stopped": dead}
        return True, {}

    # --- lifecycle --------------------------------------------------------------------
    async def start(self, *, wait: bool = True) -> None:
        """Bind and serve HTTP, start the watcher (Redis in the background); with ``wait``,
        also wait until the watcher is in its role (:meth:`wait_watching`)."""
        self._stopping = False
        self._socket = _bind(self.host, self._requested_port)
        self._watcher_task = asyncio.create_task(self.watcher.run(), name="expiry-watcher")
        if self.reaper is not None:
            self._reaper_task = asyncio.create_task(self.reaper.run(), name="multiproc-reaper")
        config = uvicorn.Config(
            make_app(self.registry, self.readiness, self.liveness),
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=2,
            server_header=False,
        )
        self._server = _Server(config)
        self._server_task = asyncio.create_task(
            self._server.serve(sockets=[self._socket]), name="sidecar-http"
        )
        while not self._server.started and not self._server_task.done():  # noqa: ASYNC110 (uvicorn has no event)
            await asyncio.sleep(0.01)
        if self._server_task.done():
            await self.stop()
            raise SidecarStartError(f"HTTP server on {self.base_url} stopped at start")
        if wait:
            try:
                await self.wait_watching(self.connect_timeout)
            except BaseException:
                await self.stop()
                raise
        log.info(
            "sidecar serving %s (watching %s, key prefix %r)",
            self.metrics_url,
            redact_url(self.config.redis_url),
            self.config.key_prefix,
            extra={"metrics_url": self.metrics_url, "key_prefix": self.config.key_prefix},
        )

    async def wait_watching(self, within: float) -> None:
        """Wait until the watcher is connected and in its role: counting (subscribed), or
        standing by while other sidecars hold every counting slot."""
        assert self._watcher_task is not None
        state = self.watcher.state
        deadline = time.monotonic() + within
        while not state.watching:
            if self._watcher_task.done():
                self._watcher_task.result()  # raises what made it stop
            where = redact_url(self.config.redis_url)
            if state.refused:
                raise SidecarStartError(
                    f"Redis at {where} refused the sidecar ({state.refused}); see "
                    "docs/security.md, 'Sidecar ACL user' (SUBSCRIBE __keyevent@*__:expired)"
                )
            if time.monotonic() > deadline:
                what = "not reachable" if not state.redis_up else "could not subscribe"
                raise SidecarStartError(
                    f"Redis at {where} {what} after {within:g} s: {state.last_error}"
                )
            await asyncio.sleep(0.02)

    async def run_until(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; raises if the HTTP server or a background task died."""
        assert self._server_task is not None
        assert self._watcher_task is not None
        stopper = asyncio.ensure_future(stop.wait())
        tasks = {self._server_task, self._watcher_task}
        if self._reaper_task is not None:
            tasks.add(self._reaper_task)
        try:
            done, _ = await asyncio.wait({stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        for task in tasks:
            if task in done:
                task.result()
                raise SidecarStartError(f"{task.get_name()} stopped unexpectedly")

    async def stop(self) -> None:
        """Stop accepting requests, hand the slot back, unsubscribe, close Redis. Safe to call
        twice."""
        self._stopping = True
        if self._server is not None and self._server_task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3.0):
                    await asyncio.shield(self._server_task)
            if not self._server_task.done():
                self._server.force_exit = True
                self._server_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._server_task
        for task in (self._reaper_task, self._watcher_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if self._socket is not None:
            self._socket.close()
        self._server = self._server_task = self._watcher_task = self._reaper_task = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY on accepted sockets only then (they
    # inherit the listener's proto); without it a response written as head + body (/metrics,
    # /readyz) waits for the scraper's delayed ACK, ~40 ms. Same fix as sidecar/api/server.py.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SidecarStartError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _watcher_status(s: WatcherState) -> str:
    if s.failed:
        return "failed"
    if s.standby:
        return "standing by" if s.redis_up else "not connected"
    return "counting" if s.subscribed else "not subscribed"
