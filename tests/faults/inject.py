"""Fault injection on a real server: crash (SIGKILL) and restart on the same port and data
directory, freeze (SIGSTOP) and thaw, cut every client connection (CLIENT KILL), starve it of
memory (maxmemory below what it holds). Each injection is counted by kind."""

from __future__ import annotations

import contextlib
import socket
from collections import Counter

from sidecar.server.embedded import EmbeddedServer


def raw(port: int, *args: str | int, timeout: float = 2.0) -> str:
    """One command in RESP2 on a fresh socket; the reply's first line (enough for admin)."""
    parts = [str(a).encode() for a in args]
    payload = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        reply = sock.makefile("rb").readline().decode().rstrip("\r\n")
    if reply.startswith("-"):
        raise RuntimeError(reply[1:])
    return reply


class Faulty:
    """An :class:`EmbeddedServer` and the faults it can suffer."""

    def __init__(self, server: EmbeddedServer) -> None:
        self.server = server
        self.injected: Counter[str] = Counter()
        self.down = False
        self.frozen = False

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def persistent(self) -> bool:
        return self.server.appendonly

    def start(self) -> None:
        self.server.start()
        self.down = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.thaw()
        self.server.stop()

    # --- the faults ---------------------------------------------------------------------------

    def crash(self) -> None:
        """SIGKILL: no shutdown, nothing flushed that was not already (AOF fsync always)."""
        self.thaw()
        proc = self.server.process
        assert proc is not None
        proc.kill()
        proc.wait()
        self.server.process = None
        self.down = True
        self.injected["crash"] += 1

    def restart(self) -> None:
        """Start again on the same port and data directory (AOF reloaded when persistent)."""
        self.server.start()
        self.down = False

    def freeze(self) -> None:
        self.server.pause()
        self.frozen = True
        self.injected["freeze"] += 1

    def thaw(self) -> None:
        if self.frozen:
            self.server.resume()
            self.frozen = False

    def kill_clients(self) -> int:
        """CLIENT KILL every normal client connection (ours is skipped)."""
        killed = int(raw(self.port, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")[1:])
        self.injected["client_kill"] += 1
        return killed

    def starve(self) -> None:
        """Out of memory: maxmemory 1 byte with noeviction, so every write is refused."""
        raw(self.port, "CONFIG", "SET", "maxmemory-policy", "noeviction")
        raw(self.port, "CONFIG", "SET", "maxmemory", "1")
        self.injected["oom"] += 1

    def feed(self) -> None:
        raw(self.port, "CONFIG", "SET", "maxmemory", "0")

    def info(self, field: str) -> str:
        """One field of INFO (``used_memory``, ``evicted_keys``...)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as sock:
            sock.sendall(b"*1\r\n$4\r\nINFO\r\n")
            reader = sock.makefile("rb")
            size = int(reader.readline()[1:])
            text = reader.read(size + 2).decode()
        for line in text.splitlines():
            if line.startswith(field + ":"):
                return line.split(":", 1)[1]
        raise KeyError(field)


SUMMARIES: list[str] = []  # figures a scenario reports; printed at the end of the pytest run
