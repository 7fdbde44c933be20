"""The API listener: uvicorn serving :class:`~sidecar.api.app.ApiApp` on its own socket.

Apart from ``/metrics`` (which never serves checkpoint content), on TCP
(``--api-host``/``--api-port``, default 127.0.0.1:9465) or a Unix socket (``--api-socket``).
The API's Checkpointer is built from the sidecar's :class:`~sidecar.CheckpointConfig` with
``strict=True``, so an outage raises and becomes a 503/504 instead of a quiet "nothing".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import uvicorn
from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry

from sidecar.api.app import ApiApp
from sidecar.api.auth import Authorizer, TokenError, authorizer_for
from sidecar.api.cli import DEFAULT_API_HOST, DEFAULT_API_PORT
from sidecar.checkpointer import Checkpointer
from sidecar.config import CheckpointConfig
from sidecar.errors import CheckpointError

log = logging.getLogger("sidecar.api")
WARM_CONNECTIONS = 32  # the concurrency the API is sized for (32 agents' requests at once)


class ApiStartError(RuntimeError):
    """The API could not start (address taken, token missing). One line."""


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the owner of the event loop decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer:
    """The HTTP API over one strict Checkpointer, as an async context manager.

    ``socket_path`` (a Unix socket) wins over ``host``/``port``; ``port=0`` binds a free port.
    ``registry`` receives the API's checkpoint metrics (default: prometheus_client's global).
    """

    def __init__(
        self,
        config: CheckpointConfig,
        *,
        host: str = DEFAULT_API_HOST,
        port: int = DEFAULT_API_PORT,
        socket_path: str | None = None,
        token_file: str | None = None,
        registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.host, self.socket_path = host, socket_path
        self._requested_port = port
        try:
            self.authorizer: Authorizer = authorizer_for(None if socket_path else host, token_file)
        except TokenError as exc:
            raise ApiStartError(str(exc)) from None
        strict = config.model_copy(update={"strict": True})
        self.checkpointer = Checkpointer.from_url(
            config=strict, registry=registry, tracer_provider=tracer_provider
        )
        self.app = ApiApp(self.checkpointer, self.authorizer, tracer_provider=tracer_provider)
        self._socket: socket.socket | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        if self._socket is None or self.socket_path:
            return self._requested_port
        port: int = self._socket.getsockname()[1]
        return port

    @property
    def task(self) -> asyncio.Task[None]:
        """The serving task (after :meth:`start`)."""
        assert self._task is not None, "start() first"
        return self._task

    @property
    def serving(self) -> bool:
        """True between a successful :meth:`start` and the server's end."""
        task = self._task
        return task is not None and not task.done()

    @property
    def url(self) -> str:
        """``http://host:port`` or ``unix:<path>`` (what clients are given)."""
        if self.socket_path:
            return f"unix:{self.socket_path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        try:
            self._socket = self._bind()
        except ApiStartError:
            await self.checkpointer.aclose()
            raise
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,  # nothing here reads the client address: skip that middleware
            timeout_keep_alive=65,  # longer than clients keep idle sockets (Node: 5 s-30 s)
            timeout_graceful_shutdown=2,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]), name="api")
        while not self._server.started and not self._task.done():  # noqa: ASYNC110 (no event)
            await asyncio.sleep(0.01)
        if self._task.done():
            await self.stop()
            raise ApiStartError(f"the API on {self.url} stopped at start")
        await self._warm()
        log.info("API serving %s", self.url, extra={"api_url": self.url})

    async def _warm(self) -> None:
        """Open ``WARM_CONNECTIONS`` Redis connections now, outside any request's budget.

        A cold redis-py connection costs several round trips (HELLO 3, CLIENT SETINFO); 64
        opened at once by a burst of requests took 50-90 ms here, most of a 100 ms budget.
        Best effort: Redis being down now is reported by the requests, as 503.
        """
        try:
            await self.checkpointer.connect(5.0, connections=WARM_CONNECTIONS)
        except CheckpointError as exc:
            log.warning("API: Redis connections not warmed at start: %s", exc)

    def _bind(self) -> socket.socket:
        if self.socket_path:
            path = Path(self.socket_path)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()  # a stale socket of an earlier run
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            where = str(path)
            address: str | tuple[str, int] = where
        else:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            # proto IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY on accepted sockets only
            # then; without it a response written as head + body waited for the client's
            # delayed ACK (~40 ms per GET).
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            where = f"{self.host}:{self._requested_port}"
            address = (self.host, self._requested_port)
        try:
            sock.bind(address)
        except OSError as exc:
            sock.close()
            raise ApiStartError(f"cannot listen on {where}: {exc.strerror}") from None
        sock.listen(1024)
        sock.setblocking(False)
        return sock

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests (2 s at most), close Redis. Idempotent."""
        if self._server is not None and self._task is not None:
            if self._task.done():
                # the server ended by itself (its task failed or was cancelled): uvicorn's own
                # shutdown never ran, so close its listener and connections here
                self._server.force_exit = True
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(3.0):
                        await self._server.shutdown()
            else:
                self._server.should_exit = True
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(3.0):
                        await asyncio.shield(self._task)
            if not self._task.done():
                self._server.force_exit = True
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
        if self._socket is not None:
            self._socket.close()
            self._socket = None
            if self.socket_path:
                with contextlib.suppress(OSError):
                    os.unlink(self.socket_path)
        self._server = self._task = None
        await self.checkpointer.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        await self.stop()


class ApiThread:
    """An :class:`ApiServer` on a thread and event loop of its own (uvloop when installed).

    What ``serve`` runs: the API's latency then does not depend on the sidecar's main loop
    (a ``/metrics`` scrape merging many agents' files, the expiry watcher), and uvloop's
    faster loop and transports took ~0.2 ms off each request here. Its Checkpointer lives on
    that loop, as a Checkpointer must (one per event loop).
    """

    def __init__(self, config: CheckpointConfig, **options: Any) -> None:
        self._config = config
        self._options = options
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.server: ApiServer | None = None

    async def start(self) -> None:
        """Start the thread and wait until the API listens; raises :class:`ApiStartError`."""
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="sidecar-api", daemon=True
        )
        self._thread.start()
        await asyncio.wrap_future(ready)

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(self._main(ready))

    async def _main(self, ready: concurrent.futures.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            server = ApiServer(self._config, **self._options)
            await server.start()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        self.server = server
        ready.set_result(None)
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            # also return when the server ends by itself: the thread then ends, and the
            # sidecar's /healthz (which polls running()) reports the API stopped
            await asyncio.wait({stopping, server.task}, return_when=asyncio.FIRST_COMPLETED)
            if not self._stop.is_set():
                log.error("API server stopped unexpectedly; /healthz reports it")
        finally:
            stopping.cancel()
            await server.stop()

    def running(self) -> bool:
        """True while the API serves: its thread alive and its server not ended. Safe to
        call from another thread (it reads two flags)."""
        thread, server = self._thread, self.server
        return thread is not None and thread.is_alive() and server is not None and server.serving

    async def stop(self) -> None:
        """Stop the server (in-flight requests get 2 s) and join the thread. Idempotent."""
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            await asyncio.to_thread(thread.join, 10.0)
        self._thread = None


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (``uvicorn[standard]``), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
