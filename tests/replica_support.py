"""A primary and its replicas on loopback, for the replicated-save tests: private servers
started here, ``REPLICAOF`` sent at run time (the server then connects at once, instead of
at its next once-a-second cron), full syncs without delay, and a TCP proxy that can delay
the replication link and drop what it holds, as a host crash or a partition would."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from cluster_support import command

from sidecar.server.embedded import EmbeddedServer

FAST_SYNC = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")


def start_server(binary: str, data_dir: Path, *extra: str) -> EmbeddedServer:
    """A private server that can be a primary or a replica (fast full syncs)."""
    return EmbeddedServer(binary=binary, data_dir=data_dir, extra_args=(*FAST_SYNC, *extra)).start()


@contextlib.contextmanager
def running(binary: str, data_dir: Path, *extra: str) -> Iterator[EmbeddedServer]:
    """:func:`start_server`, stopped on exit."""
    server = start_server(binary, data_dir, *extra)
    try:
        yield server
    finally:
        server.stop()


def kill(server: EmbeddedServer) -> None:
    """SIGKILL: a crash, nothing flushed, no hand-off."""
    assert server.process is not None
    server.process.kill()
    server.process.wait()


def replicate(replica_port: int, primary_port: int) -> None:
    command(replica_port, "REPLICAOF", "127.0.0.1", primary_port)


def promote(replica_port: int) -> None:
    command(replica_port, "REPLICAOF", "NO", "ONE")


def link_up(replica_port: int) -> bool:
    info = command(replica_port, "INFO", "replication")
    assert isinstance(info, str)
    return "master_link_status:up" in info


def connected_replicas(primary_port: int) -> int:
    info = command(primary_port, "INFO", "replication")
    assert isinstance(info, str)
    line = next(x for x in info.splitlines() if x.startswith("connected_slaves:"))
    return int(line.split(":", 1)[1])


async def wait_link_up(replica_port: int, primary_port: int, wait_s: float = 15.0) -> None:
    """Until the replica has synced and the primary counts it (async: a proxy keeps pumping)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if link_up(replica_port) and connected_replicas(primary_port) >= 1:
            return
        await asyncio.sleep(0.005)
    raise TimeoutError(f"replica {replica_port} did not sync with {primary_port}")


class DelayProxy:
    """Forwards one TCP port to another, each chunk ``delay_s`` late in both directions.

    Put between a replica and its primary, it makes the replica lag the way a replica across
    a network does. :meth:`drop` discards what it holds and cuts both sides: the bytes in
    flight when a primary's host dies are lost with it.
    """

    def __init__(self, target_port: int, delay_s: float) -> None:
        self.target_port = target_port
        self.delay_s = delay_s
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> DelayProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:  # the primary is gone
            writer.transport.abort()
            return
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
            for coro in (self._read(source, queue), self._write(queue, sink)):
                task = asyncio.create_task(coro)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _read(
        self, source: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                queue.put_nowait((loop.time() + self.delay_s, data))

    async def _write(
        self, queue: asyncio.Queue[tuple[float, bytes]], sink: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionError):
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                sink.write(data)
                await sink.drain()

    async def drop(self) -> None:
        """Discard every byte held and cut every connection (abort: no FIN, no flush); accept
        nothing more. Everything that loses data happens before the first ``await``, so no
        held chunk can be forwarded meanwhile."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def aclose(self) -> None:
        await self.drop()
