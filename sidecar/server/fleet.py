"""The sidecar in a fleet: at most K counting watchers per Redis, elected by leases in Redis.

Every agent pod runs a sidecar, so a Redis may have hundreds of them. Keyspace notifications
are broadcast: if every sidecar subscribed, the server would deliver each expiry once per
sidecar (see docs/sidecar.md, "The sidecar in a fleet"). So only the holders of K **counting
slots** subscribe and count; the others stand by and only poll for a free slot.

A slot is the key ``<prefix>:sidecar:watcher:<i>`` (``i`` in ``0..K-1``) holding the owner's
token, taken with ``SET NX PX <slot_ttl>`` and renewed about every second by an owner-checked
script; a sidecar that dies or loses Redis stops renewing, and a standby takes the slot within
``slot_ttl`` plus one poll (1-4 s with the defaults; about 1 s after a clean stop, which hands
its slot back). K = 2 by default, so that while one counting sidecar dies the other still
counts: each expiry is claimed by exactly one of the counting watchers (see the claims in
:mod:`sidecar.server.watcher`), so the shipped rules' ``sum`` over instances stays exact
whether 1, 2 or 5 sidecars run, and even while a slot changes hands.

Shape::

    FleetWatcher.run()
      ├── _elect()            poll for a slot (standby) / renew it (counting), with backoff
      ├── inner.run()         ExpiryWatcher or ClusterExpiryWatcher, only while a slot is held
      └── _supervise()        restarts the inner watcher if it died of an unexpected error

The election never decides the expiry counts (the claims do); it keeps the number of
subscribers, hence the server's pub/sub fan-out, at K however large the fleet grows. It also
names the **primary** (slot 0), the one watcher that counts evictions, which cannot be claimed
(memory pressure evicts the claims too): a holder of a higher slot moves down to slot 0 as
soon as it falls vacant, so evictions go uncounted only while slot 0 changes hands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from typing import Any, Final

from redis.exceptions import RedisClusterException, RedisError, ResponseError

from sidecar.config import redact_url
from sidecar.keys import validate_prefix
from sidecar.server.clients import close_all, run_to_end, sidecar_client
from sidecar.server.cluster_watcher import ClusterExpiryWatcher
from sidecar.server.watcher import ExpiryWatcher, WatcherState
from sidecar.sockets import OwnedSockets

log = logging.getLogger("sidecar.watcher")

DEFAULT_SLOTS: Final = 2
CLIENT_NAME: Final = "checkpoint-sidecar-election"
# Owner-checked renew and release: a sidecar whose slot was taken over never touches the new
# holder's lease. (Plain scripts, no shebang: they only ever extend or delete a small key.)
RENEW: Final = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)
RELEASE: Final = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


def slot_key(prefix: str, slot: int) -> str:
    """The lease key of counting slot ``slot``."""
    return f"{prefix}:sidecar:watcher:{slot}"


def is_sidecar_key(prefix: str, key: str | bytes) -> bool:
    """A key the sidecars write for themselves under ``prefix``: a slot lease or a claim."""
    name = key.decode(errors="replace") if isinstance(key, bytes) else key
    head = f"{prefix}:"
    if not name.startswith(head):
        return False
    rest = name[len(head) :]
    return rest.startswith("sidecar:watcher:") or (rest.startswith("{") and "}:counted:" in rest)


def new_token() -> str:
    """A token unique to this sidecar process (host and pid for whoever reads the key)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"


class FleetWatcher:
    """Counts expiries while holding one of ``slots`` counting slots; stands by otherwise.

    Same interface as :class:`ExpiryWatcher`: ``state`` and ``await run()`` until cancelled.
    ``state`` is the inner watcher's own, with ``standby`` and ``slot`` set here.
    """

    def __init__(
        self,
        redis_url: str,
        key_prefix: str,
        *,
        cluster: bool = False,
        slots: int = DEFAULT_SLOTS,
        slot_ttl: float = 3.0,
        renew_interval: float = 1.0,
        poll_interval: float = 1.0,
        health_interval: float = 1.0,
        connect_timeout: float = 2.0,
        backoff_max: float = 2.0,
        restart_initial: float = 0.5,
        restart_max: float = 10.0,
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.redis_url = redis_url
        self.key_prefix = validate_prefix(key_prefix)
        self.cluster = cluster
        self.slots = slots
        self.slot_ttl_ms = int(slot_ttl * 1000)
        self.renew_interval = renew_interval
        self.poll_interval = poll_interval
        self.connect_timeout = connect_timeout
        self.backoff_max = backoff_max
        self.restart_initial = restart_initial
        self.restart_max = restart_max
        self.inner: ExpiryWatcher | ClusterExpiryWatcher
        if cluster:
            self.inner = ClusterExpiryWatcher(
                redis_url, key_prefix, health_interval=health_interval,
                connect_timeout=connect_timeout,
            )  # fmt: skip
        else:
            self.inner = ExpiryWatcher(
                redis_url, key_prefix, health_interval=health_interval,
                connect_timeout=connect_timeout, backoff_max=backoff_max,
            )  # fmt: skip
        self.state: WatcherState = self.inner.state
        self.state.standby = True
        self.token = new_token()
        self.takeovers = 0  # slots taken by this sidecar
        self._renewed = 0.0  # monotonic time of the last confirmed take or renewal
        self._inner_task: asyncio.Task[None] | None = None
        self._restart_at: float | None = None
        self._restart_delay = restart_initial
        self._client: Any = None
        self._sockets = OwnedSockets()

    async def run(self) -> None:
        """Elect, count while elected, stand by otherwise; until cancelled."""
        delay = 0.1
        try:
            while True:
                try:
                    await self._elect()
                    delay = 0.1
                    wait = (
                        self.renew_interval if self.state.slot is not None else self.poll_interval
                    )
                except (RedisError, RedisClusterException, OSError) as exc:
                    await self._election_failed(exc)
                    wait, delay = delay, min(delay * 2, self.backoff_max)
                self._supervise()
                await asyncio.sleep(wait)
        finally:
            await run_to_end(self._shutdown())

    # --- the election ------------------------------------------------------------------------
    async def _elect(self) -> None:
        client = self._connect()
        state = self.state
        async with asyncio.timeout(self.connect_timeout):
            if state.slot is None:
                for slot in range(self.slots):
                    key = slot_key(self.key_prefix, slot)
                    if await client.set(key, self.token, nx=True, px=self.slot_ttl_ms):
                        self._renewed = time.monotonic()
                        self._take(slot)
                        break
                else:
                    state.redis_up = True  # standing by, Redis answering
                    state.last_error = state.refused = None
                return
            key = slot_key(self.key_prefix, state.slot)
            renewed = await client.eval(RENEW, 1, key, self.token, self.slot_ttl_ms)
            if not renewed:  # lapsed (a long pause, a restarted server): free again? keep it
                renewed = await client.set(key, self.token, nx=True, px=self.slot_ttl_ms)
            if renewed and state.slot > 0:
                await self._move_down(client, key)
        if renewed:
            self._renewed = time.monotonic()
        else:
            log.warning("counting slot %d was taken over; standing by", state.slot)
            await self._drop()

    async def _move_down(self, client: Any, held: str) -> None:
        """Take a lower slot that fell vacant, and hand back the one held: slot 0 (the
        primary, which counts evictions) stays held whenever any sidecar counts."""
        state = self.state
        assert state.slot is not None
        for slot in range(state.slot):
            if await client.set(
                slot_key(self.key_prefix, slot), self.token, nx=True, px=self.slot_ttl_ms
            ):
                await client.eval(RELEASE, 1, held, self.token)
                log.info("moved from counting slot %d to %d", state.slot, slot)
                state.slot = slot
                self.inner.primary = slot == 0
                return

    def _take(self, slot: int) -> None:
        self.inner.primary = slot == 0
        self.state.slot = slot
        self.state.standby = False
        self.takeovers += 1
        log.info(
            "holding counting slot %d of %d on %s: subscribing",
            slot, self.slots, redact_url(self.redis_url),
            extra={"slot": slot, "key_prefix": self.key_prefix},
        )  # fmt: skip
        self._start_inner()

    async def _drop(self) -> None:
        await self._stop_inner()
        self.state.slot = None
        self.state.standby = True

    async def _election_failed(self, exc: BaseException) -> None:
        state = self.state
        state.last_error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ResponseError):
            state.refused = state.last_error
        await self._disconnect()
        if state.slot is None:
            state.redis_up = False
            return
        # Holding a slot: keep counting (claims keep it exact) until the lease has surely
        # lapsed and a standby may hold it; then stand by too.
        if time.monotonic() - self._renewed > self.slot_ttl_ms / 1000:
            log.warning("counting slot %d not renewed in time: standing by", state.slot)
            await self._drop()
            state.redis_up = False

    # --- the inner watcher -------------------------------------------------------------------
    def _start_inner(self) -> None:
        self._inner_task = asyncio.create_task(self.inner.run(), name="expiry-watcher")

    async def _stop_inner(self) -> None:
        task, self._inner_task = self._inner_task, None
        self._restart_at = None
        if task is not None:
            task.cancel()
            # gather, not suppress(BaseException): a cancel of *this* task must still propagate
            await asyncio.gather(task, return_exceptions=True)
        self.state.subscribed = False

    def _supervise(self) -> None:
        """Restart, with backoff, an inner watcher that died of an unexpected error."""
        state, task = self.state, self._inner_task
        if self._restart_at is not None:
            if time.monotonic() >= self._restart_at and state.slot is not None:
                self._restart_at = None
                state.failed = None
                self._start_inner()
            return
        if task is None or not task.done() or task.cancelled():
            if task is not None and state.subscribed:
                self._restart_delay = self.restart_initial  # healthy again
            return
        exc = task.exception()
        state.failed = f"{type(exc).__name__}: {exc}"
        state.subscribed = False
        self._restart_at = time.monotonic() + self._restart_delay
        log.error(
            "expiry watcher died; restarting in %.1f s", self._restart_delay,
            exc_info=exc, extra={"error": state.failed},
        )  # fmt: skip
        self._restart_delay = min(self._restart_delay * 2, self.restart_max)

    # --- connections -------------------------------------------------------------------------
    def _connect(self) -> Any:
        if self._client is None:
            if self.cluster:
                from sidecar.store import build_client

                self._client = build_client(self.redis_url, cluster=True)
            else:
                self._sockets = OwnedSockets()
                self._client = sidecar_client(
                    self.redis_url, self._sockets, connect_timeout=self.connect_timeout,
                    client_name=CLIENT_NAME,
                )  # fmt: skip
        return self._client

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if self.cluster:
            from sidecar.store import close_client

            with contextlib.suppress(RedisError, OSError):
                await close_client(client)
        else:
            await close_all(self._sockets, client)

    async def _shutdown(self) -> None:
        """Stop counting, hand the slot back at once (a standby need not wait for the lease to
        lapse), close the election connection."""
        slot = self.state.slot
        await self._stop_inner()
        if slot is not None and self._client is not None:
            with contextlib.suppress(RedisError, RedisClusterException, OSError):
                async with asyncio.timeout(1.0):
                    await self._client.eval(RELEASE, 1, slot_key(self.key_prefix, slot), self.token)
        self.state.slot = None
        self.state.standby = True
        await self._disconnect()
