"""The TTL-expiry watcher: counts checkpoints that expired unused, from Redis expiry events.

Redis publishes ``__keyevent@<db>__:expired`` with the key name each time a key expires (only
when ``notify-keyspace-events`` holds ``E`` and ``x``), and ``__keyevent@<db>__:evicted`` when
``maxmemory`` evicts a key (``E`` and ``e``). A run's ``meta`` key expiring means the run
expired: sections and meta always expire together, so counting ``meta`` counts each run once.
A ``lease`` key expiring means the worker holding the run died. A run's ``meta`` key evicted
means the run's progress was lost to memory pressure (a ``sections`` key evicted alone is not
counted: one event per run).
Keys deleted by cleanup produce no event, so cleaned runs are never counted.

Several watchers may count at once (one per sidecar holding a counting slot, see
:mod:`sidecar.server.fleet`), so each event is counted by the watcher that wins its **claim**:
``SET <prefix>:{<user>:<run>}:counted:<kind> 1 NX PX 10000``. The claim carries the run's hash
tag, so on a cluster it goes to the node that emitted the event; claims of one read batch go in
one pipeline. Evictions are not claimed (memory pressure evicts claims too): only the primary
watcher (counting slot 0) counts them. Claim keys have a kind that
:func:`~sidecar.keys.parse_key` does not know, so nothing else ever mistakes them for a run's
keys, and their own expiry is ignored here.

Shape of the watcher (one loop per Redis node, so that cluster support can run one per primary)::

    ExpiryWatcher.run()            reconnect loop with capped exponential backoff
      └── _session(url)            connect, assert events, SUBSCRIBE, read until it breaks
            ├── ensure_expiry_events()   CONFIG GET / CONFIG SET, adding E x e, removing none
            ├── _pick(message)           cheap suffix/prefix test: is it ours, which counter
            └── _claim(batch)            one pipeline of SET NX PX; count the claims won

Pub/sub has no replay: expiries that happen while the watcher is disconnected are not counted
by it (another counting sidecar, if any, still counts them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import redis.asyncio as aioredis
from redis.exceptions import AskError, MovedError, OutOfMemoryError, RedisError, ResponseError

from sidecar.config import redact_url
from sidecar.keys import parse_key, validate_prefix
from sidecar.langgraph import keys as lg_keys
from sidecar.server.clients import close_all, run_to_end, sidecar_client
from sidecar.sockets import OwnedSockets

log = logging.getLogger("sidecar.watcher")

NOTIFY_SETTING: Final = "notify-keyspace-events"
CLIENT_NAME: Final = "checkpoint-sidecar-watcher"
OPERATOR_HINT: Final = (
    "set notify-keyspace-events to include E, x and e on the server, keeping the flags already "
    "there (for example CONFIG SET notify-keyspace-events Exe when it is empty; on managed Redis "
    "set the parameter notify-keyspace-events in the parameter group)"
)
CLAIM_TTL_MS: Final = 10_000  # far longer than two watchers can be apart on one event
# The claims of one batch on a single server: the 1-based indexes of the claims won. No
# shebang: under OOM its SET fails like a plain SET would (and the primary counts the batch).
CLAIM_SCRIPT: Final = """local won = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, '1', 'NX', 'PX', ARGV[1]) then won[#won + 1] = i end
end
return won"""
MAX_BATCH: Final = 1024  # events read before their claims are sent in one pipeline
_TTL, _LEASE, _EVICTED = "ttl_expiries", "lease_expiries", "evictions"
EventsState = Literal["confirmed", "unconfirmed"]


def needs_expiry_flags(flags: str) -> str:
    """The flags missing from ``flags`` for ``__keyevent@*__:expired`` and ``:evicted``
    (``""`` when none)."""
    missing = "" if "E" in flags else "E"
    for flag in "xe":
        if flag not in flags and "A" not in flags:  # "A" is the alias of "g$lshzxetd"
            missing += flag
    return missing


def with_expiry_flags(flags: str) -> str:
    """``flags`` with ``E``, ``x`` and ``e`` added; every flag already set is kept."""
    return flags + needs_expiry_flags(flags)


def claim_key(event_key: bytes, kind: str) -> bytes:
    """The dedup claim of one event: the run's hash tag kept, ``counted:<kind>`` after it.

    ``event_key`` ends with ``}:meta``, ``}:lease`` or ``}:sections``; two events of one run and
    kind within :data:`CLAIM_TTL_MS` share a claim, so each is counted once over the fleet.
    """
    tag_end = event_key.rindex(b"}:") + 2
    return event_key[:tag_end] + b"counted:" + kind.encode()


async def ensure_expiry_events(client: aioredis.Redis) -> tuple[bool, str]:
    """Read ``notify-keyspace-events`` and add ``E``/``x`` if missing.

    Returns ``(confirmed, detail)``: ``confirmed`` is True when the server's setting, read back,
    includes expiry key-events. A refused CONFIG (ACL, managed Redis) gives ``(False, reason)``;
    connection errors propagate.
    """
    try:
        current = await _read_flags(client)
    except ResponseError as exc:
        return False, f"CONFIG GET {NOTIFY_SETTING} refused: {exc}"
    missing = needs_expiry_flags(current)
    if not missing:
        return True, f"{NOTIFY_SETTING}={current!r}"
    wanted = with_expiry_flags(current)
    try:
        await client.config_set(NOTIFY_SETTING, wanted)
        after = await _read_flags(client)
    except ResponseError as exc:
        return False, f"CONFIG SET {NOTIFY_SETTING} {wanted} refused: {exc}"
    if needs_expiry_flags(after):
        return False, f"{NOTIFY_SETTING} is {after!r} after CONFIG SET {wanted!r}"
    log.info(
        "expiry events turned on",
        extra={"setting": NOTIFY_SETTING, "before": current, "after": after},
    )
    return True, f"{NOTIFY_SETTING}={after!r} (was {current!r})"


async def _read_flags(client: aioredis.Redis) -> str:
    reply: dict[Any, Any] = await client.config_get(NOTIFY_SETTING)
    # CONFIG GET answers with str keys even when decode_responses=False; values may be bytes.
    value = reply.get(NOTIFY_SETTING, reply.get(NOTIFY_SETTING.encode(), ""))
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class WatcherState:
    """What the watcher knows right now; read by /readyz and the metrics collector."""

    redis_up: bool = False
    subscribed: bool = False
    expiry_events: EventsState = "unconfirmed"
    ttl_expiries: int = 0
    lease_expiries: int = 0
    evictions: int = 0
    reconnects: int = 0
    subscriptions: int = 0
    last_error: str | None = None
    refused: str | None = None  # a command Redis refused (ACL): retrying will not fix it
    ever_subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    # Set by the fleet election (sidecar.server.fleet); a watcher used alone always counts.
    standby: bool = False  # holds no counting slot: polls for one, does not subscribe
    slot: int | None = None  # the counting slot held
    failed: str | None = None  # a watcher task that died of an unexpected error, until restarted

    @property
    def counting(self) -> bool:
        """Holds a counting slot, subscribed, expiry events confirmed: every expiry is seen."""
        return not self.standby and self.subscribed and self.expiry_events == "confirmed"

    @property
    def up(self) -> bool:
        """Healthy: counting, or standing by with Redis answering."""
        if self.failed:
            return False
        return self.counting or (self.standby and self.redis_up)

    @property
    def watching(self) -> bool:
        """Connected and in its role (counting or standing by), events confirmed or not."""
        return self.redis_up and (self.standby or self.subscribed)


class ExpiryWatcher:
    """Counts expired runs and leases of ``key_prefix`` on the Redis at ``redis_url``.

    ``await watcher.run()`` runs until cancelled; Redis going away is not an error: the watcher
    reconnects with backoff, re-asserts the expiry-event setting and re-subscribes.
    """

    def __init__(
        self,
        redis_url: str,
        key_prefix: str,
        *,
        backoff_initial: float = 0.1,
        backoff_max: float = 2.0,
        health_interval: float = 1.0,
        config_check_interval: float = 30.0,
        connect_timeout: float = 2.0,
        batch_script: bool = True,
    ) -> None:
        self.redis_url = redis_url
        self.key_prefix = validate_prefix(key_prefix)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.health_interval = health_interval
        self.config_check_interval = config_check_interval
        self.connect_timeout = connect_timeout
        self.state = WatcherState()
        self._head = f"{self.key_prefix}:{{".encode()
        # a LangGraph thread (sidecar.langgraph.keys) expires when its counting key does
        self._thread_head = f"{self.key_prefix}:lg:{{".encode()
        self._thread_end = f"}}:{lg_keys.COUNTING_KIND}".encode()
        # Counts what cannot be claimed (evictions, claims refused for memory); in a fleet only
        # the holder of counting slot 0 is primary (set by sidecar.server.fleet).
        self.primary = True
        self.batch_script = batch_script  # False on a cluster node: claims of many slots
        self._warned_events = False
        self._last_logged: str | None = None

    async def run(self) -> None:
        """Watch until cancelled (a single node; cluster would run one loop per primary)."""
        await self._node_loop(self.redis_url)

    async def _node_loop(self, url: str) -> None:
        delay = self.backoff_initial
        had_session = self.state.subscriptions > 0  # run() again (a slot re-taken): a reconnect
        failures = 0
        while True:
            subscriptions = self.state.subscriptions
            try:
                await self._session(url, reconnect=had_session)
            except (RedisError, OSError) as exc:
                self._lost(url, exc, failures)
            if self.state.subscriptions != subscriptions:  # it worked for a while: start over
                delay = self.backoff_initial
                failures = 0
            self.state.subscribed = False
            self.state.redis_up = False
            had_session = had_session or self.state.subscriptions > 0
            failures += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)

    def _lost(self, url: str, exc: BaseException, failures: int) -> None:
        error = f"{type(exc).__name__}: {exc}"
        self.state.last_error = error
        if isinstance(exc, ResponseError):  # connected, but a command was refused (ACL)
            self.state.refused = error
        # Warn when it was up, at the first failure, and when the reason changes; else debug.
        fresh = failures == 0 or error != self._last_logged
        self._last_logged = error
        level = logging.WARNING if fresh else logging.DEBUG
        log.log(
            level,
            "expiry watcher lost Redis at %s: %s; reconnecting",
            redact_url(url),
            self.state.last_error,
            extra={"redis_url": redact_url(url), "error": self.state.last_error},
        )

    async def _session(self, url: str, *, reconnect: bool) -> None:
        sockets = OwnedSockets()
        client = sidecar_client(
            url, sockets, connect_timeout=self.connect_timeout, client_name=CLIENT_NAME
        )  # commands (PING, CONFIG, claims) on one connection, the subscription on another
        pubsub = client.pubsub()
        try:
            async with asyncio.timeout(self.connect_timeout):  # TimeoutError is an OSError
                await client.ping()
            self.state.redis_up = True
            await self._check_events(client, url)
            db = int(client.connection_pool.connection_kwargs.get("db", 0) or 0)
            channels = (f"__keyevent@{db}__:expired", f"__keyevent@{db}__:evicted")
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await pubsub.subscribe(*channels)
                await self._read(pubsub, client, url, channels, reconnect=reconnect)
            except ResponseError as exc:
                if self.state.subscribed:
                    raise
                # the refusal comes back as the first reply read: an ACL without the channels
                raise ResponseError(f"SUBSCRIBE {' '.join(channels)} refused: {exc}") from exc
        finally:
            self.state.subscribed = False
            # a cancel that lands during the clean-up must not leave sockets open
            await run_to_end(self._end_session(pubsub, client, sockets))

    @staticmethod
    async def _end_session(
        pubsub: aioredis.client.PubSub, client: aioredis.Redis, sockets: OwnedSockets
    ) -> None:
        if pubsub.connection is not None and pubsub.connection.is_connected:
            with contextlib.suppress(RedisError, OSError):  # OSError covers TimeoutError
                async with asyncio.timeout(0.5):
                    await pubsub.unsubscribe()
        await close_all(sockets, pubsub, client)

    async def _check_events(self, client: aioredis.Redis, url: str) -> None:
        async with asyncio.timeout(self.connect_timeout):
            confirmed, detail = await ensure_expiry_events(client)
        self.state.expiry_events = "confirmed" if confirmed else "unconfirmed"
        if confirmed:
            self._warned_events = False
            log.debug("expiry events confirmed: %s", detail)
        elif not self._warned_events:
            self._warned_events = True
            log.warning(
                "expiry events unconfirmed on %s (%s): expired checkpoints may go uncounted; %s",
                redact_url(url),
                detail,
                OPERATOR_HINT,
                extra={"redis_url": redact_url(url), "setting": NOTIFY_SETTING},
            )

    async def _read(
        self,
        pubsub: aioredis.client.PubSub,
        client: aioredis.Redis,
        url: str,
        channels: tuple[str, str],
        *,
        reconnect: bool,
    ) -> None:
        """Read messages until the connection breaks; PING when idle to detect a dead link.

        Messages already received are read in a batch (up to :data:`MAX_BATCH`) and their
        claims sent in one pipeline, so a burst costs one round trip per batch, not per event.
        """
        ping_sent: float | None = None
        next_config_check = time.monotonic() + self.config_check_interval
        evicted = channels[1].encode()
        while True:
            message = await pubsub.get_message(timeout=self.health_interval)
            now = time.monotonic()
            if message is None:
                if ping_sent is not None and now - ping_sent > self.health_interval * 2:
                    raise ConnectionError("no answer to PING on the subscription")
                if ping_sent is None:
                    async with asyncio.timeout(self.connect_timeout):
                        await pubsub.ping()
                    ping_sent = now
                if now >= next_config_check:
                    next_config_check = now + self.config_check_interval
                    await self._check_events(client, url)
                continue
            ping_sent = None
            batch: list[tuple[bytes, str]] = []
            while message is not None:
                kind = message["type"]
                if kind == "message":
                    picked = self._pick(message["data"], message["channel"] == evicted)
                    if picked is not None:
                        batch.append(picked)
                elif kind == "subscribe" and message["data"] == len(channels):
                    self._subscribed(url, channels, reconnect=reconnect)
                if len(batch) >= MAX_BATCH:
                    break
                message = await pubsub.get_message(timeout=0)
            if batch:
                await self._claim(client, batch)

    def _subscribed(self, url: str, channels: tuple[str, str], *, reconnect: bool) -> None:
        state = self.state
        state.subscribed = True
        state.redis_up = True
        state.last_error = state.refused = None
        self._last_logged = None
        state.subscriptions += 1
        if reconnect:
            state.reconnects += 1
        state.ever_subscribed.set()
        log.info(
            "expiry watcher subscribed to %s on %s",
            " and ".join(channels),
            redact_url(url),
            extra={"channel": channels[0], "key_prefix": self.key_prefix},
        )

    def _pick(self, key: bytes, evicted: bool) -> tuple[bytes, str] | None:
        """``(claim key, counter)`` for an event of ours, None for anything else.

        A run is counted by its ``meta`` key, a LangGraph thread by its index key (one per
        thread, existing exactly while it has a checkpoint); the other keys of either are not.
        """
        if key.startswith(self._thread_head):
            if not key.endswith(self._thread_end):
                return None
            if evicted:
                return claim_key(key, "evicted"), _EVICTED
            return claim_key(key, lg_keys.COUNTING_KIND), _TTL
        if not key.startswith(self._head):
            return None
        if evicted:  # the run's progress is gone with its meta (sections alone: not counted)
            return (claim_key(key, "evicted"), _EVICTED) if key.endswith(b"}:meta") else None
        if key.endswith(b"}:meta"):
            return claim_key(key, "meta"), _TTL
        if key.endswith(b"}:lease"):
            return claim_key(key, "lease"), _LEASE
        return None

    async def _claim(self, client: aioredis.Redis, batch: list[tuple[bytes, str]]) -> None:
        """Claim the batch's expiries in one pipeline; count those this watcher won.

        Evictions are not claimed: they happen under memory pressure, which evicts the claims
        too (measured: a few percent counted twice). They are counted by the **primary**
        watcher only (counting slot 0, or a watcher used alone); so is an expiry whose claim
        the server refused for lack of memory (``OOM``, under ``noeviction``). A claim refused
        otherwise (an ACL without SET on the prefix) is raised: counting without claims would
        count twice in a fleet. A cluster redirection (the slot moved between the expiry and
        the claim, rare) is counted without a claim.
        """
        claimed = [claim for claim, counter in batch if counter != _EVICTED]
        replies: list[Any] = []
        if claimed:
            async with asyncio.timeout(self.connect_timeout):
                replies = await self._send_claims(client, claimed)
        results = iter(replies)
        state = self.state
        for claim, counter in batch:
            reply = self.primary if counter == _EVICTED else next(results)
            if isinstance(reply, (AskError, MovedError)):
                reply = True
            elif isinstance(reply, OutOfMemoryError):
                reply = self.primary
            elif isinstance(reply, ResponseError):  # an ACL without SET on the prefix: say so
                raise ResponseError(f"SET {claim.decode()} NX PX refused: {reply}") from reply
            if isinstance(reply, BaseException):
                raise reply
            if reply:
                setattr(state, counter, getattr(state, counter) + 1)
                if log.isEnabledFor(logging.DEBUG):
                    self._log_event(claim, counter)

    async def _send_claims(self, client: aioredis.Redis, claims: list[bytes]) -> list[Any]:
        """One reply per claim: True (won), None (another watcher's), or the error.

        A single server takes the whole batch in one script (a third of the pipeline's cost
        per claim, measured: client-side command packing dominates); a cluster node cannot (the
        claims' slots differ), so it gets a pipeline.
        """
        if self.batch_script:
            try:
                won: list[int] = await client.eval(CLAIM_SCRIPT, len(claims), *claims, CLAIM_TTL_MS)
            except ResponseError as exc:  # OOM (or NOPERM): every claim of the batch
                return [exc] * len(claims)
            replies: list[Any] = [None] * len(claims)
            for index in won:
                replies[index - 1] = True
            return replies
        pipe = client.pipeline(transaction=False)
        for claim in claims:
            pipe.set(claim, b"1", nx=True, px=CLAIM_TTL_MS)
        result: list[Any] = await pipe.execute(raise_on_error=False)
        return result

    def _log_event(self, claim: bytes, counter: str) -> None:
        kind = "meta" if counter != _LEASE else "lease"
        parsed = parse_key(self.key_prefix, claim.rsplit(b"counted:", 1)[0] + kind.encode())
        if parsed is not None:
            what = {_TTL: "run expired", _LEASE: "lease expired", _EVICTED: "run evicted"}
            log.debug(
                "checkpoint %s",
                what[counter],
                extra={"user_id": parsed.user_id, "run_id": parsed.run_id, "kind": parsed.kind},
            )
