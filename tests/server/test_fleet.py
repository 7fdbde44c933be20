"""Several sidecars on one Redis: K counting slots, each event claimed once, fast hand-over.

In-process :class:`FleetWatcher` objects on a private server (each one is what a sidecar
process runs); the end-to-end proof with sidecar processes and Prometheus is
``tests/e2e/test_fleet.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from redis.crc import key_slot

from sidecar.keys import parse_key, run_keys
from sidecar.server.embedded import EmbeddedServer
from sidecar.server.fleet import FleetWatcher, is_sidecar_key, slot_key
from sidecar.server.watcher import claim_key

Starter = Callable[..., FleetWatcher]


async def wait_for(check: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    try:
        async with asyncio.timeout(seconds):
            while not check():  # noqa: ASYNC110 (plain attribute reads)
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {seconds:g} s waiting for {what}") from None


@pytest.fixture
async def client(private_server: EmbeddedServer) -> AsyncIterator[aioredis.Redis]:
    async with aioredis.Redis.from_url(private_server.url) as c:
        yield c


@pytest.fixture
async def fleet(private_server: EmbeddedServer) -> AsyncIterator[Starter]:
    """Start FleetWatchers on the private server; all stopped (slots handed back) at the end."""
    tasks: list[asyncio.Task[None]] = []

    def start(prefix: str = "fl", **kwargs: float) -> FleetWatcher:
        watcher = FleetWatcher(private_server.url, prefix, health_interval=0.2, **kwargs)  # type: ignore[arg-type]
        tasks.append(asyncio.create_task(watcher.run()))
        watcher.task = tasks[-1]  # type: ignore[attr-defined]
        return watcher

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def total(watchers: list[FleetWatcher], counter: str = "ttl_expiries") -> int:
    return sum(getattr(w.state, counter) for w in watchers)


def test_claim_keys_share_the_run_slot_and_are_not_run_keys() -> None:
    keys = run_keys("fl", "user:1", "run{x}")
    for event_key, kind in ((keys.meta, "meta"), (keys.lease, "lease"), (keys.sections, "evicted")):
        claim = claim_key(event_key.encode(), kind)
        assert claim == f"{event_key.rsplit(':', 1)[0]}:counted:{kind}".encode()
        assert key_slot(claim) == key_slot(event_key.encode())  # same shard as the event
        assert parse_key("fl", claim) is None  # never mistaken for a run's key
        assert is_sidecar_key("fl", claim)
    assert parse_key("fl", slot_key("fl", 0)) is None
    assert is_sidecar_key("fl", slot_key("fl", 1).encode())
    assert not any(is_sidecar_key("fl", k) for k in keys.all)
    assert not is_sidecar_key("other", slot_key("fl", 0))


async def test_k_sidecars_count_the_others_stand_by_and_each_expiry_counts_once(
    fleet: Starter, client: aioredis.Redis
) -> None:
    watchers = [fleet(slots=2) for _ in range(4)]
    await wait_for(lambda: sum(w.state.counting for w in watchers) == 2, "two counting")
    await asyncio.sleep(1.5)  # a few election rounds: still two, the others standing by
    assert sorted(w.state.slot for w in watchers if w.state.slot is not None) == [0, 1]
    assert sum(w.state.standby and w.state.up for w in watchers) == 2
    # Only the counting sidecars subscribe: the server's fan-out is K, not the fleet size.
    numsub = dict(await client.pubsub_numsub("__keyevent@0__:expired"))
    assert numsub[b"__keyevent@0__:expired"] == 2
    pipe = client.pipeline(transaction=False)
    for i in range(200):
        keys = run_keys("fl", "u", f"r{i}")
        pipe.set(keys.meta, b"x", px=50)
        pipe.set(keys.sections, b"x", px=50)
        if i % 4 == 0:
            pipe.set(keys.lease, b"x", px=50)
    await pipe.execute()
    await wait_for(lambda: total(watchers) == 200 and total(watchers, "lease_expiries") == 50,
                   "every expiry counted")  # fmt: skip
    await asyncio.sleep(1.0)  # nothing counted twice, late
    assert total(watchers) == 200
    assert total(watchers, "lease_expiries") == 50
    standby = [w for w in watchers if w.state.slot is None]
    assert total(standby) == 0  # standing by: not subscribed, nothing seen


async def test_a_standby_takes_over_within_seconds_and_nothing_is_missed(
    fleet: Starter, client: aioredis.Redis
) -> None:
    watchers = [fleet(slots=2) for _ in range(3)]
    await wait_for(lambda: sum(w.state.counting for w in watchers) == 2, "two counting")
    first = next(w for w in watchers if w.state.slot == 0)
    first.task.cancel()  # type: ignore[attr-defined]
    with contextlib.suppress(asyncio.CancelledError):
        await first.task  # type: ignore[attr-defined]
    assert first.state.slot is None
    assert await client.get(slot_key("fl", 0)) is None  # handed back at once
    # Runs expire during the hand-over: the other counting sidecar claims them all.
    for i in range(30):
        await client.set(run_keys("fl", "u", f"h{i}").meta, b"x", px=1)
        await asyncio.sleep(0.03)
    others = [w for w in watchers if w is not first]
    await wait_for(lambda: all(w.state.counting for w in others), "the standby to count")
    await wait_for(lambda: total(watchers) == 30, "every expiry of the hand-over counted")
    # Slot 0 (the primary, which counts evictions) is held again, whoever holds it.
    await wait_for(lambda: any(w.state.slot == 0 for w in others), "slot 0 held again")
    assert sorted(w.inner.primary for w in others) == [False, True]


async def test_expiries_under_oom_are_counted_once(fleet: Starter, client: aioredis.Redis) -> None:
    """maxmemory reached under noeviction refuses the claims (OOM): the primary counts those
    expiries alone, so they are neither lost nor counted twice."""
    watchers = [fleet(slots=2) for _ in range(2)]
    await wait_for(lambda: all(w.state.counting for w in watchers), "both counting")
    pipe = client.pipeline(transaction=False)
    for i in range(50):
        pipe.set(run_keys("fl", "u", f"oom{i}").meta, b"x", px=700)
    await pipe.execute()
    await client.config_set("maxmemory-policy", "noeviction")
    await client.config_set("maxmemory", "1")
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            await client.set("probe", b"x")
        await wait_for(lambda: total(watchers) == 50, "expiries counted under OOM")
        await asyncio.sleep(0.5)
        assert total(watchers) == 50
        assert [w.inner.primary for w in watchers if w.state.ttl_expiries] == [True]
    finally:
        await client.config_set("maxmemory", "0")


async def test_a_sidecar_frozen_past_its_lease_loses_the_slot_without_double_counting(
    fleet: Starter, client: aioredis.Redis
) -> None:
    """A lease taken over while its holder was away: the holder learns it at its next renewal
    (owner-checked) and stands by; the new holder keeps the slot."""
    a = fleet(slots=1)
    await wait_for(lambda: a.state.counting, "a counting")
    b = fleet(slots=1)
    await wait_for(lambda: b.state.standby and b.state.redis_up, "b standing by")
    await client.set(slot_key("fl", 0), b"someone-else", px=3000)  # as if a's lease lapsed
    await wait_for(lambda: a.state.standby, "a to notice and stand by")
    assert await client.get(slot_key("fl", 0)) == b"someone-else"  # a touched nothing
    await client.delete(slot_key("fl", 0))
    await wait_for(lambda: a.state.counting or b.state.counting, "someone counting again")
    await client.set(run_keys("fl", "u", "once").meta, b"x", px=1)
    await wait_for(lambda: total([a, b]) == 1, "the expiry counted")
    await asyncio.sleep(0.5)
    assert total([a, b]) == 1


async def test_evicted_runs_are_counted_once_over_two_counting_sidecars(
    fleet: Starter, client: aioredis.Redis
) -> None:
    watchers = [fleet(slots=2) for _ in range(2)]
    await wait_for(lambda: all(w.state.counting for w in watchers), "both counting")
    flags = (await client.config_get("notify-keyspace-events"))["notify-keyspace-events"]
    assert "e" in flags  # turned on by the watchers, with E and x
    runs = 3000
    pipe = client.pipeline(transaction=False)
    for i in range(runs):
        keys = run_keys("fl", "u", f"ev{i}")
        pipe.hset(keys.meta, mapping={"order": "a", "pad": "x" * 200})
        pipe.hset(keys.sections, mapping={"a": "y" * 200})
    await pipe.execute()
    used = int((await client.info("memory"))["used_memory"])
    await client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        await client.config_set("maxmemory", str(used - 400_000))
        for i in range(200):  # writes make the server evict
            await client.set(f"filler:{i}", b"z" * 2000)
    finally:
        await client.config_set("maxmemory", "0")

    async def lost() -> int:
        pipe = client.pipeline(transaction=False)
        for i in range(runs):
            keys = run_keys("fl", "u", f"ev{i}")
            pipe.exists(keys.meta)
        return sum(n == 0 for n in await pipe.execute())

    missing = await lost()
    assert missing > 100, "the test did not make the server evict"
    await wait_for(lambda: total(watchers, "evictions") >= missing, "evictions counted")
    await asyncio.sleep(0.5)
    assert total(watchers, "evictions") == missing  # once per run whose meta was evicted
    assert total(watchers) == 0  # an eviction is not a TTL expiry


async def test_a_watcher_that_died_is_restarted_and_reported_meanwhile(
    fleet: Starter, client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = fleet(slots=1, restart_initial=1.5)
    await wait_for(lambda: w.state.counting, "counting")
    original = w.inner._pick

    def boom(key: bytes, evicted: bool) -> tuple[bytes, str] | None:
        monkeypatch.setattr(w.inner, "_pick", original)  # once
        raise RuntimeError("injected bug")

    monkeypatch.setattr(w.inner, "_pick", boom)
    await client.set(run_keys("fl", "u", "a").meta, b"x", px=1)
    await wait_for(lambda: w.state.failed is not None, "the death reported")
    assert not w.state.up and not w.state.counting
    await wait_for(lambda: w.state.counting and w.state.failed is None, "restarted")
    assert w.state.reconnects == 1  # the re-subscription
    await client.set(run_keys("fl", "u", "b").meta, b"x", px=1)
    await wait_for(lambda: w.state.ttl_expiries == 1, "counted after the restart")
