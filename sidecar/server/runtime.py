"""``Sidecar``: the expiry watcher and the HTTP endpoint running in the current event loop.

Used by ``checkpoint-sidecar serve`` and by applications (the demo) that want the sidecar in
process::

    async with Sidecar(redis_url="redis://127.0.0.1:6379/0", port=0) as sc:
        print(sc.metrics_url, sc.expiries)

Entering waits for Redis (up to ``connect_timeout``), subscribes the watcher and binds the
HTTP socket; leaving stops accepting requests, unsubscribes and closes Redis. Signals are the
caller's business: uvicorn's own signal handling is disabled here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import uvicorn
from prometheus_client import CollectorRegistry
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from sidecar.config import CheckpointConfig, redact_url
from sidecar.server.app import make_app
from sidecar.server.clients import close_all, run_to_end, sidecar_client
from sidecar.server.cluster_watcher import ClusterExpiryWatcher
from sidecar.server.metrics import build_registry
from sidecar.server.watcher import ExpiryWatcher, WatcherState
from sidecar.sockets import OwnedSockets

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
    ``multiproc_dir`` adds the metrics of every agent process writing into that directory.
    ``registry``: serve and extend this registry instead of a fresh one.
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
        self.watcher: ExpiryWatcher | ClusterExpiryWatcher
        if config.is_cluster:  # redis+cluster://: a subscription per node, replicas as standbys
            self.watcher = ClusterExpiryWatcher(
                config.redis_url, config.key_prefix, health_interval=health_interval
            )
        else:
            self.watcher = ExpiryWatcher(
                config.redis_url, config.key_prefix, health_interval=health_interval
            )
        try:
            self.registry = build_registry(
                self.watcher.state, multiproc_dir=multiproc_dir, registry=registry
            )
        except OSError as exc:
            raise SidecarStartError(
                f"multiprocess directory {multiproc_dir}: {exc.strerror or exc}"
            ) from None
        self.multiproc_dir = multiproc_dir
        self._requested_port = port
        self._socket: socket.socket | None = None
        self._server: _Server | None = None
        self._server_task: asyncio.Task[None] | None = None
        self._watcher_task: asyncio.Task[None] | None = None

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
        """``(ready, details)`` as ``/readyz`` reports it."""
        s = self.watcher.state
        details: dict[str, Any] = {
            "redis": "up" if s.redis_up else "down",
            "watcher": "subscribed" if s.subscribed else "not subscribed",
            "expiry_events": s.expiry_events,
        }
        if s.last_error and not s.ready:
            details["error"] = s.last_error
        return s.ready, details

    # --- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        """Wait for Redis, subscribe the watcher, bind and serve HTTP."""
        probe = self.config.redis_url
        if isinstance(self.watcher, ClusterExpiryWatcher):
            probe = self.watcher.seed_url  # a plain URL of the cluster node given
        await wait_for_redis(probe, self.connect_timeout)
        self._socket = _bind(self.host, self._requested_port)
        self._watcher_task = asyncio.create_task(self.watcher.run(), name="expiry-watcher")
        try:
            await self._wait_subscribed()
        except BaseException:
            await self.stop()
            raise
        config = uvicorn.Config(
            make_app(self.registry, self.readiness),
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
        log.info(
            "sidecar serving %s (watching %s, key prefix %r)",
            self.metrics_url,
            redact_url(self.config.redis_url),
            self.config.key_prefix,
            extra={"metrics_url": self.metrics_url, "key_prefix": self.config.key_prefix},
        )

    async def _wait_subscribed(self) -> None:
        assert self._watcher_task is not None
        state = self.watcher.state
        deadline = time.monotonic() + self.connect_timeout
        while not state.ever_subscribed.is_set():
            if self._watcher_task.done():
                self._watcher_task.result()  # raises what made it stop
            where = redact_url(self.config.redis_url)
            if state.refused:
                raise SidecarStartError(
                    f"Redis at {where} refused the expiry watcher ({state.refused}); its user "
                    "needs SUBSCRIBE and the channel __keyevent@*__:expired"
                )
            if time.monotonic() > deadline:
                raise SidecarStartError(
                    f"the expiry watcher could not subscribe on {where} within "
                    f"{self.connect_timeout:g} s: {state.last_error}"
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):  # asyncio.wait_for can drop a cancel on 3.11
                    await state.ever_subscribed.wait()

    async def run_until(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; raises if the HTTP server or the watcher died."""
        assert self._server_task is not None
        assert self._watcher_task is not None
        stopper = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait(
                {stopper, self._server_task, self._watcher_task},
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stopper.cancel()
        for task in (self._server_task, self._watcher_task):
            if task in done:
                task.result()
                raise SidecarStartError(f"{task.get_name()} stopped unexpectedly")

    async def stop(self) -> None:
        """Stop accepting requests, unsubscribe, close Redis. Safe to call twice."""
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
        if self._watcher_task is not None:
            self._watcher_task.cancel()
            with contextlib.suppress(BaseException):
                await self._watcher_task
        if self._socket is not None:
            self._socket.close()
        self._server = self._server_task = self._watcher_task = None

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
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SidecarStartError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def wait_for_redis(url: str, wait_seconds: float) -> None:
    """Wait until Redis answers PING, retrying with backoff for up to ``wait_seconds``.

    A refused login or command fails at once (waiting will not fix a wrong password).
    """
    deadline = time.monotonic() + wait_seconds
    delay = 0.1
    last = "no attempt"
    while True:
        sockets = OwnedSockets()
        client = sidecar_client(url, sockets, connect_timeout=2.0)
        try:
            async with asyncio.timeout(2.0):  # not a socket timeout: see server/clients.py
                await client.ping()
            return
        except (AuthenticationError, ResponseError) as exc:
            raise SidecarStartError(f"Redis at {redact_url(url)} refused us: {exc}") from None
        except (RedisError, OSError) as exc:
            last = str(exc) or type(exc).__name__
        finally:
            await run_to_end(close_all(sockets, client))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SidecarStartError(
                f"Redis at {redact_url(url)} not reachable after {wait_seconds:g} s: {last}"
            )
        log.debug("waiting for Redis at %s: %s", redact_url(url), last)
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, 2.0)
