"""The expiry watcher on a Redis Cluster: one :class:`ExpiryWatcher` loop per node.

Keyspace notifications are local to the node where the key expired (unlike PUBLISH, they are
not broadcast over the cluster bus), and only a primary expires keys: a replica applies its
primary's DEL and emits no event at all for replicated commands. So each expiry is counted
once, by the one primary that owned the key, although the watcher subscribes on every node.

Replicas are subscribed too, as standbys: when a primary dies and its replica is promoted,
the replica's subscription is already there, so the expiries it performs from the moment of its
promotion are counted; pub/sub has no replay, and waiting for the next discovery to subscribe
would lose those. Readiness (``state.subscribed``, ``redis_up``, ``expiry_events``) is judged
on the primaries only: a replica that is down does not make the sidecar unready.

Topology is followed by re-reading ``CLUSTER NODES`` from any reachable node (the URL's node and
every node seen since): every ``discovery_interval`` seconds, and every 0.5 s while a primary's
loop has lost its subscription. A node that leaves the topology (removed, failed) has its loop
stopped; its counts are kept. A node loop that dies of an unexpected error (a bug, not a lost
connection: those it survives by itself) is logged with its traceback and restarted with
backoff; meanwhile ``state.failed`` names it, so ``sidecar_expiry_watcher_up`` and
``..._counting`` say 0; its re-subscription counts in ``sidecar_expiry_watcher_reconnects_total``.

Shape::

    ClusterExpiryWatcher.run()
      ├── _discover()                 CLUSTER NODES -> nodes (not failed, with an address)
      ├── ExpiryWatcher(node_url).run() per node (reconnect loop, SUBSCRIBE, count)
      ├── _supervise()                restarts a node loop that died, with backoff
      └── _refresh()                  sums the node states into ``state`` every 0.1 s
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from urllib.parse import urlsplit, urlunsplit

from redis.exceptions import RedisError

from sidecar.keys import validate_prefix
from sidecar.server.clients import close_all, run_to_end, sidecar_client
from sidecar.server.watcher import CLIENT_NAME, ExpiryWatcher, WatcherState
from sidecar.sockets import OwnedSockets

log = logging.getLogger("sidecar.watcher")

Address = tuple[str, int]
_COUNTS = ("ttl_expiries", "lease_expiries", "evictions", "reconnects", "subscriptions")


def node_url(cluster_url: str, address: Address) -> str:
    """The plain ``redis://`` / ``rediss://`` URL of one node, credentials and options kept."""
    parts = urlsplit(cluster_url)
    scheme = parts.scheme.replace("+cluster", "")
    auth = parts.netloc.rpartition("@")[0]
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    netloc = f"{auth}@{host}:{address[1]}" if auth else f"{host}:{address[1]}"
    return urlunsplit((scheme, netloc, parts.path, parts.query, parts.fragment))


def parse_watchable(text: str, fallback_host: str) -> dict[Address, bool]:
    """Nodes in a ``CLUSTER NODES`` reply that can be watched: address -> is a primary.

    Failed (``fail``), address-less and handshaking nodes are left out; a node merely
    suspected (``fail?``) stays until the cluster agrees it failed.
    """
    nodes: dict[Address, bool] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        addr, flags = fields[1], set(fields[2].split(","))
        if flags & {"fail", "noaddr", "handshake"}:
            continue
        host, _, port = addr.split("@")[0].rpartition(":")
        if not port or port == "0":
            continue
        nodes[(host or fallback_host, int(port))] = "master" in flags
    return nodes


class ClusterExpiryWatcher:
    """Counts expired runs and leases of ``key_prefix`` on every primary of a cluster.

    Same interface as :class:`ExpiryWatcher`: ``state`` (a :class:`WatcherState` aggregated over
    the primaries: subscribed only when every primary is) and ``await run()`` until cancelled.
    """

    def __init__(
        self,
        redis_url: str,
        key_prefix: str,
        *,
        discovery_interval: float = 5.0,
        health_interval: float = 1.0,
        connect_timeout: float = 2.0,
        restart_initial: float = 0.5,
        restart_max: float = 10.0,
    ) -> None:
        self.redis_url = redis_url
        self.key_prefix = validate_prefix(key_prefix)
        self.discovery_interval = discovery_interval
        self.health_interval = health_interval
        self.connect_timeout = connect_timeout
        self.state = WatcherState()
        parts = urlsplit(redis_url)
        self._seeds: list[Address] = [(parts.hostname or "127.0.0.1", parts.port or 6379)]
        self.nodes: dict[Address, ExpiryWatcher] = {}
        self._is_primary: dict[Address, bool] = {}
        self._tasks: dict[Address, asyncio.Task[None]] = {}
        self._retired = WatcherState()  # counts of loops stopped after a topology change
        self._first: set[Address] | None = None
        self.restart_initial = restart_initial
        self.restart_max = restart_max
        self._restart_at: dict[Address, float] = {}  # a died loop's restart time
        self._restart_delay: dict[Address, float] = {}
        self._primary = True

    @property
    def primary(self) -> bool:
        """Counts evictions (see :class:`ExpiryWatcher`); passed on to every node loop."""
        return self._primary

    @primary.setter
    def primary(self, value: bool) -> None:
        self._primary = value
        for watcher in self.nodes.values():
            watcher.primary = value

    @property
    def seed_url(self) -> str:
        """A plain URL of the node the cluster URL names (to wait for it at start-up)."""
        return node_url(self.redis_url, self._seeds[0])

    @property
    def primaries(self) -> list[Address]:
        """The primaries watched right now (as of the last discovery)."""
        return sorted(a for a in self.nodes if self._is_primary[a])

    @property
    def replicas(self) -> list[Address]:
        """The replicas subscribed as standbys right now."""
        return sorted(a for a in self.nodes if not self._is_primary[a])

    async def run(self) -> None:
        try:
            last = -self.discovery_interval
            while True:
                since = time.monotonic() - last
                lagging = any(not self.nodes[a].state.subscribed for a in self.primaries)
                if since >= self.discovery_interval or (lagging and since >= 0.5):
                    await self._discover()  # on a timer, and soon after a primary is lost
                    last = time.monotonic()
                self._supervise()
                self._refresh()
                await asyncio.sleep(0.1)
        finally:
            await self._stop_all()

    def _supervise(self) -> None:
        """Restart, with backoff, a node loop that died of an unexpected error."""
        now = time.monotonic()
        for address, task in list(self._tasks.items()):
            watcher = self.nodes[address]
            if address in self._restart_at:
                if now < self._restart_at[address]:
                    continue
                del self._restart_at[address]
                watcher.state.failed = None
                self._start(address, watcher)
                continue
            if not task.done() or task.cancelled():
                continue
            exc = task.exception()
            delay = self._restart_delay.get(address, self.restart_initial)
            self._restart_delay[address] = min(delay * 2, self.restart_max)
            self._restart_at[address] = now + delay
            watcher.state.failed = f"{type(exc).__name__}: {exc}"
            watcher.state.subscribed = watcher.state.redis_up = False
            log.error(
                "expiry watcher on %s:%d died; restarting in %.1f s",
                *address,
                delay,
                exc_info=exc,
                extra={"error": watcher.state.failed},
            )

    def _start(self, address: Address, watcher: ExpiryWatcher) -> None:
        self._tasks[address] = asyncio.create_task(
            watcher.run(), name=f"expiry-watcher-{address[0]}:{address[1]}"
        )

    async def _discover(self) -> None:
        for seed in list(dict.fromkeys([*self.nodes, *self._seeds])):
            try:
                text = await self._cluster_nodes(seed)
            except (RedisError, OSError, TimeoutError) as exc:
                self.state.last_error = f"{type(exc).__name__}: {exc}"
                continue
            nodes = parse_watchable(text, seed[0])
            if any(nodes.values()):
                self._apply(nodes)
                return
        self.state.redis_up = False

    async def _cluster_nodes(self, address: Address) -> str:
        sockets = OwnedSockets()
        client = sidecar_client(
            node_url(self.redis_url, address), sockets,
            connect_timeout=self.connect_timeout, client_name=CLIENT_NAME,
        )  # fmt: skip
        try:
            async with asyncio.timeout(self.connect_timeout):
                reply: object = await client.execute_command(  # type: ignore[no-untyped-call]
                    "CLUSTER", "NODES"
                )
        finally:
            await run_to_end(close_all(sockets, client))
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    def _apply(self, nodes: dict[Address, bool]) -> None:
        self._seeds = list(dict.fromkeys([*nodes, *self._seeds]))[:16]
        for address in [a for a in self.nodes if a not in nodes]:
            log.info("left the cluster topology, stop watching %s:%d", *address)
            self._retire(address)
        for address, is_primary in nodes.items():
            was = self._is_primary.get(address)
            self._is_primary[address] = is_primary
            if was is not None and was != is_primary:
                role = "primary" if is_primary else "replica"
                log.info("%s:%d is now a %s (its subscription goes on)", *address, role)
            if address not in self.nodes:
                log.info(
                    "watching expiries on %s %s:%d",
                    "primary" if is_primary else "replica (standby)", *address,
                )  # fmt: skip
                watcher = ExpiryWatcher(
                    node_url(self.redis_url, address), self.key_prefix,
                    health_interval=self.health_interval, connect_timeout=self.connect_timeout,
                    batch_script=False,
                )  # fmt: skip
                watcher.primary = self._primary
                self.nodes[address] = watcher
                self._start(address, watcher)
        if self._first is None:
            self._first = {a for a, is_primary in nodes.items() if is_primary}

    def _retire(self, address: Address) -> None:
        watcher = self.nodes.pop(address)
        self._is_primary.pop(address, None)
        self._tasks.pop(address).cancel()
        self._restart_at.pop(address, None)
        self._restart_delay.pop(address, None)
        for name in _COUNTS:
            setattr(
                self._retired, name, getattr(self._retired, name) + getattr(watcher.state, name)
            )

    def _refresh(self) -> None:
        """Aggregate the node states into :attr:`state` (read by /readyz and /metrics): counts
        over every node, readiness over the primaries."""
        state, every = self.state, [w.state for w in self.nodes.values()]
        for name in _COUNTS:
            setattr(
                state, name, getattr(self._retired, name) + sum(getattr(n, name) for n in every)
            )
        nodes = [self.nodes[a].state for a in self.primaries]
        state.subscribed = bool(nodes) and all(n.subscribed for n in nodes)
        state.redis_up = bool(nodes) and all(n.redis_up for n in nodes)
        confirmed = bool(nodes) and all(n.expiry_events == "confirmed" for n in nodes)
        state.expiry_events = "confirmed" if confirmed else "unconfirmed"
        errors = [n.last_error for n in nodes if n.last_error]
        state.last_error = errors[0] if errors else (None if state.subscribed else state.last_error)
        refused = [n.refused for n in nodes if n.refused]
        state.refused = refused[0] if refused else None
        failed = [f"{a[0]}:{a[1]}: {w.state.failed}" for a, w in self.nodes.items()
                  if w.state.failed]  # fmt: skip
        state.failed = failed[0] if failed else None
        first = self._first or set()
        if first and all(a in self.nodes and self.nodes[a].state.ever_subscribed.is_set()
                         for a in first):  # fmt: skip
            state.ever_subscribed.set()

    async def _stop_all(self) -> None:
        """Stop every node loop, keeping their counts (``run()`` may be called again)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        for address in list(self.nodes):
            self._retire(address)
        self._refresh()
        self.state.subscribed = False
