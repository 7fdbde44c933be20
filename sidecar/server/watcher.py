"""The TTL-expiry watcher: counts checkpoints that expired unused, from Redis expiry events.

Redis publishes ``__keyevent@<db>__:expired`` with the key name each time a key expires (only
when ``notify-keyspace-events`` holds ``E`` and ``x``). A run's ``meta`` key expiring means the
run expired: sections and meta always expire together, so counting ``meta`` counts each run
once. A ``lease`` key expiring means the worker holding the run died. Keys deleted by cleanup
produce no ``expired`` event, so cleaned runs are never counted.

Shape of the watcher (one loop per Redis node, so that cluster support can run one per primary)::

    ExpiryWatcher.run()            reconnect loop with capped exponential backoff
      └── _session(url)            connect, assert expiry events, SUBSCRIBE, read until it breaks
            ├── ensure_expiry_events()   CONFIG GET / CONFIG SET, adding E and x, removing none
            └── _count(key)              cheap suffix/prefix test; full decode only for debug logs

Pub/sub has no replay: expiries that happen while the watcher is disconnected are not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from sidecar.config import redact_url
from sidecar.keys import parse_key, validate_prefix
from sidecar.server.clients import close_all, run_to_end, sidecar_client
from sidecar.sockets import OwnedSockets

log = logging.getLogger("sidecar.watcher")

NOTIFY_SETTING: Final = "notify-keyspace-events"
CLIENT_NAME: Final = "checkpoint-sidecar-watcher"
OPERATOR_HINT: Final = (
    "set notify-keyspace-events to include E and x on the server, keeping the flags already "
    "there (for example CONFIG SET notify-keyspace-events Ex when it is empty; on managed Redis "
    "set the parameter notify-keyspace-events in the parameter group)"
)
EventsState = Literal["confirmed", "unconfirmed"]


def needs_expiry_flags(flags: str) -> str:
    """The flags missing from ``flags`` for ``__keyevent@*__:expired`` (``""`` when none)."""
    missing = "" if "E" in flags else "E"
    if "x" not in flags and "A" not in flags:  # "A" is the alias of "g$lshzxetd"
        missing += "x"
    return missing


def with_expiry_flags(flags: str) -> str:
    """``flags`` with ``E`` and ``x`` added; every flag already set is kept."""
    return flags + needs_expiry_flags(flags)


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
    reconnects: int = 0
    subscriptions: int = 0
    last_error: str | None = None
    refused: str | None = None  # a command Redis refused (ACL): retrying will not fix it
    ever_subscribed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def up(self) -> bool:
        """Subscribed and expiry events confirmed on: every expiry will be seen."""
        return self.subscribed and self.expiry_events == "confirmed"

    @property
    def ready(self) -> bool:
        return self.redis_up and self.subscribed


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
        self._warned_events = False
        self._last_logged: str | None = None

    async def run(self) -> None:
        """Watch until cancelled (a single node; cluster would run one loop per primary)."""
        await self._node_loop(self.redis_url)

    async def _node_loop(self, url: str) -> None:
        delay = self.backoff_initial
        had_session = False
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
        )
        pubsub = client.pubsub()
        try:
            async with asyncio.timeout(self.connect_timeout):  # TimeoutError is an OSError
                await client.ping()
            self.state.redis_up = True
            await self._check_events(client, url)
            db = int(client.connection_pool.connection_kwargs.get("db", 0) or 0)
            channel = f"__keyevent@{db}__:expired"
            async with asyncio.timeout(self.connect_timeout):
                await pubsub.subscribe(channel)
            await self._read(pubsub, client, url, channel, reconnect=reconnect)
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
        channel: str,
        *,
        reconnect: bool,
    ) -> None:
        """Read messages until the connection breaks; PING when idle to detect a dead link."""
        ping_sent: float | None = None
        next_config_check = time.monotonic() + self.config_check_interval
        state = self.state
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
            kind = message["type"]
            if kind == "message":
                self._count(message["data"])
            elif kind == "subscribe":
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
                    channel,
                    redact_url(url),
                    extra={"channel": channel, "key_prefix": self.key_prefix},
                )

    def _count(self, key: bytes) -> None:
        if not key.startswith(self._head):
            return
        if key.endswith(b"}:meta"):
            self.state.ttl_expiries += 1
        elif key.endswith(b"}:lease"):
            self.state.lease_expiries += 1
        else:
            return
        if log.isEnabledFor(logging.DEBUG):
            parsed = parse_key(self.key_prefix, key)
            if parsed is not None:
                log.debug(
                    "checkpoint %s expired",
                    "run" if parsed.kind == "meta" else "lease",
                    extra={"user_id": parsed.user_id, "run_id": parsed.run_id, "kind": parsed.kind},
                )
