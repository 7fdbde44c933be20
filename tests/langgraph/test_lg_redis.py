"""What SidecarSaver does in Redis: TTLs on every key, no KEYS/SCAN, O(1)/O(k) reads, values
stored once per (channel, version), the run index, outages, telemetry, key names."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from langgraph.checkpoint.base import Checkpoint, empty_checkpoint
from lg_support import (  # noqa: F401  (fixtures)
    command_name,
    lg_config,
    lg_cp_fixture,
    monitored,
    saver_fixture,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from sidecar import (
    Checkpointer,
    CheckpointTimeout,
    CheckpointUnavailable,
    SerializationError,
    names,
)
from sidecar.langgraph import SidecarSaver
from sidecar.langgraph.keys import COUNTING_KIND, parse_thread_key, run_key, thread_keys
from sidecar.server.embedded import EmbeddedServer


def config(thread: str, checkpoint_id: str | None = None, ns: str = "") -> dict[str, Any]:
    conf: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": ns}
    if checkpoint_id:
        conf["checkpoint_id"] = checkpoint_id
    return {"configurable": conf}


async def fill(
    saver: SidecarSaver, thread: str, n: int, *, run: str | None = None, big: str = "doc"
) -> list[dict[str, Any]]:
    """n checkpoints, each changing channel 'step' only ('doc' keeps version 1)."""
    stored: list[dict[str, Any]] = []
    parent: str | None = None
    for i in range(n):
        cp: Checkpoint = empty_checkpoint()
        cp["channel_values"] = {"doc": big, "step": i}
        cp["channel_versions"] = {"doc": 1, "step": i + 1}
        new = {"doc": 1, "step": i + 1} if i == 0 else {"step": i + 1}
        md: dict[str, Any] = {"source": "loop", "step": i, "parents": {}}
        if run:
            md["run_id"] = run
        result = await saver.aput(config(thread, parent), cp, md, new)  # type: ignore[arg-type]
        parent = result["configurable"]["checkpoint_id"]
        stored.append(result)
    return stored


async def all_keys(client: aioredis.Redis) -> list[bytes]:
    return [k async for k in client.scan_iter(count=1000)]  # the test may scan its own server


@pytest.fixture
async def client(private_server: EmbeddedServer) -> Any:
    c = aioredis.Redis.from_url(private_server.url)
    yield c
    await c.aclose()


async def test_every_key_has_a_ttl_that_slides_on_writes(
    saver: SidecarSaver, client: aioredis.Redis
) -> None:
    stored = await fill(saver, "t1", 3, run="run-a")
    await saver.aput_writes(stored[-1], [("step", 9)], "task-1")
    keys = await all_keys(client)
    assert len(keys) == 4  # idx, state, runs + the run index
    ttl_ms = saver.checkpointer.config.ttl_ms
    for key in keys:
        assert 0 < await client.pttl(key) <= ttl_ms, key
    for key in thread_keys("lgt", "t1").all:
        await client.pexpire(key, 5000)
    await saver.aput_writes(stored[-1], [("step", 10)], "task-2")
    for key in thread_keys("lgt", "t1").all:
        assert await client.pttl(key) > ttl_ms - 60_000, key  # slid back to the full TTL
    await saver.aget_tuple(config("t1"))  # refresh_ttl_on_read is off: reads leave it
    await client.pexpire(thread_keys("lgt", "t1").idx, 5000)
    await saver.aget_tuple(config("t1"))
    assert await client.pttl(thread_keys("lgt", "t1").idx) <= 5000


async def test_refresh_ttl_on_read(private_server: EmbeddedServer, client: aioredis.Redis) -> None:
    cfg = lg_config(refresh_ttl_on_read=True)
    async with Checkpointer.from_url(
        private_server.url, config=cfg, registry=CollectorRegistry()
    ) as cp:
        saver = SidecarSaver(cp)
        await fill(saver, "t1", 2)  # no run id: no runs key
        keys = thread_keys("lgt", "t1")
        for read in (
            lambda: saver.aget_tuple(config("t1")),
            lambda: anext(saver.alist(config("t1"), limit=1)),
        ):
            for key in (keys.idx, keys.state):
                await client.pexpire(key, 5000)
            await read()
            for key in (keys.idx, keys.state):
                assert await client.pttl(key) > cfg.ttl_ms - 60_000


async def test_no_keys_or_scan_and_one_script_per_call(
    saver: SidecarSaver, private_server: EmbeddedServer
) -> None:
    async def workload(n: int) -> None:
        stored = await fill(saver, f"t{n}", 3, run=f"run-{n}")
        await saver.aput_writes(stored[-1], [("step", 1)], "task")
        await saver.aget_tuple(config(f"t{n}"))
        [t async for t in saver.alist(config(f"t{n}"), filter={"step": 1}, limit=2)]
        await saver.acopy_thread(f"t{n}", f"copy{n}")
        await saver.aprune([f"copy{n}"], strategy="keep_latest")
        await saver.adelete_for_runs([f"run-{n}"])
        await saver.adelete_thread(f"copy{n}")

    await workload(0)  # connection handshake, scripts loaded (EVAL once per script)
    async with monitored(private_server.url) as lines:
        await workload(1)
    sent = [command_name(line) for line in lines if line.get("client_type") != "lua"]
    in_scripts = {command_name(line) for line in lines if line.get("client_type") == "lua"}
    assert set(sent) == {"EVALSHA"}, sent
    assert not ({"KEYS", "SCAN", "HSCAN", "ZSCAN", "SSCAN"} & (in_scripts | set(sent)))


async def test_get_tuple_and_list_cost_does_not_grow_with_history(
    saver: SidecarSaver, private_server: EmbeddedServer
) -> None:
    await fill(saver, "short", 12)
    await fill(saver, "long", 300)
    await saver.aget_tuple(config("short"))  # scripts loaded
    [t async for t in saver.alist(config("short"), limit=1)]
    costs: dict[str, list[int]] = {}
    for thread in ("short", "long"):
        for op in ("get", "list"):
            async with monitored(private_server.url) as lines:
                if op == "get":
                    assert (await saver.aget_tuple(config(thread))) is not None
                else:
                    got = [t async for t in saver.alist(config(thread), limit=10)]
                    assert len(got) == 10
            costs.setdefault(op, []).append(
                sum(1 for line in lines if line.get("client_type") == "lua")
            )
            assert sum(1 for line in lines if line.get("client_type") != "lua") == 1
    assert costs["get"][0] == costs["get"][1], costs  # same commands at 12 and 300
    assert costs["list"][0] == costs["list"][1], costs


async def test_channel_values_are_stored_once_per_version(
    saver: SidecarSaver, client: aioredis.Redis
) -> None:
    await fill(saver, "t1", 50, big="x" * 10_000)
    # one record per checkpoint; values: 'doc' once, 'step' 50 times
    assert await client.hlen(thread_keys("lgt", "t1").state) == 50 + 1 + 50
    # every field counted (SAMPLES 0): the default samples 5 of the 101 fields and extrapolates, so
    # a sample holding the 10 KB value reads ~200 KB (one run in ~20 failed so)
    used = await client.memory_usage(thread_keys("lgt", "t1").state, samples=0)
    assert used < 2 * 10_000 + 50 * 600
    latest = await saver.aget_tuple(config("t1"))
    assert latest is not None
    assert latest.checkpoint["channel_values"] == {"doc": "x" * 10_000, "step": 49}


async def test_run_index_refresh_and_idempotent_deletes(
    saver: SidecarSaver, client: aioredis.Redis
) -> None:
    await fill(saver, "t1", 2, run="old-run")
    await fill(saver, "t2", 1, run="old-run")
    # the old run's index is about to expire while t1 lives on: mark it stale, as time would
    await client.zadd(thread_keys("lgt", "t1").runs, {"old-run": 0})
    await client.pexpire(run_key("lgt", "old-run"), 3000)
    await fill(saver, "t1", 1, run="new-run")
    assert await client.pttl(run_key("lgt", "old-run")) > 3000  # refreshed by that put
    assert set(await client.smembers(run_key("lgt", "old-run"))) == {b"t1", b"t2"}

    # a crash after the thread steps, before the index step: the index still lists t1, t2
    await saver.adelete_for_runs(["old-run"])
    await client.sadd(run_key("lgt", "old-run"), "t1", "t2")
    await saver.adelete_for_runs(["old-run"])  # the retry finds nothing to do, and finishes
    assert not await client.exists(run_key("lgt", "old-run"))
    left = [t async for t in saver.alist(config("t1"))]
    assert [t.metadata["run_id"] for t in left] == ["new-run"]
    assert await saver.aget_tuple(config("t2")) is None
    assert not await client.exists(*thread_keys("lgt", "t2").all)  # emptied thread: no keys


async def test_copy_thread_is_repeatable_and_indexes_runs(
    saver: SidecarSaver, client: aioredis.Redis
) -> None:
    await fill(saver, "src", 3, run="r")
    await saver.acopy_thread("src", "dst")
    await saver.acopy_thread("src", "dst")  # re-running an interrupted copy is harmless
    src = [t.checkpoint["id"] async for t in saver.alist(config("src"))]
    dst = [t.checkpoint["id"] async for t in saver.alist(config("dst"))]
    assert src == dst and len(dst) == 3
    assert set(await client.smembers(run_key("lgt", "r"))) == {b"src", b"dst"}
    for key in thread_keys("lgt", "dst").all:
        assert 0 < await client.pttl(key) <= saver.checkpointer.config.ttl_ms


async def test_prune_removes_unreferenced_values_only(
    saver: SidecarSaver, client: aioredis.Redis
) -> None:
    await fill(saver, "t1", 5)
    await saver.aprune(["t1"])
    # one checkpoint left: its record, 'doc' v1 and 'step' v5
    assert await client.hlen(thread_keys("lgt", "t1").state) == 3
    latest = await saver.aget_tuple(config("t1"))
    assert latest is not None and latest.checkpoint["channel_values"]["step"] == 4


async def test_outage_raises_whatever_strict_says(
    private_server: EmbeddedServer, registry: CollectorRegistry
) -> None:
    cfg = lg_config(strict=False, budget_ms=300)
    async with Checkpointer.from_url(private_server.url, config=cfg, registry=registry) as cp:
        saver = SidecarSaver(cp)
        await fill(saver, "t1", 1)
        private_server.pause()
        try:
            with pytest.raises(CheckpointTimeout):
                await saver.aget_tuple(config("t1"))
        finally:
            private_server.resume()
        assert (await saver.aget_tuple(config("t1"))) is not None
        private_server.stop()
        with pytest.raises(CheckpointUnavailable):
            await saver.aget_tuple(config("t1"))  # never "no checkpoint"
        with pytest.raises(CheckpointUnavailable):
            [t async for t in saver.alist(config("t1"))]
        with pytest.raises(CheckpointUnavailable):
            await fill(saver, "t1", 1)
    sample = registry.get_sample_value
    labels = {"operation": "lg_get_tuple", "outcome": names.TIMEOUT}
    assert sample(names.OPERATION_DURATION + "_count", labels) == 1
    labels["outcome"] = names.ERROR
    assert sample(names.OPERATION_DURATION + "_count", labels) == 1


async def test_each_method_is_a_span_and_a_histogram_observation(
    private_server: EmbeddedServer,
    registry: CollectorRegistry,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    async with Checkpointer.from_url(
        private_server.url, config=lg_config(), registry=registry, tracer_provider=tracer_provider
    ) as cp:
        saver = SidecarSaver(cp)
        stored = await fill(saver, "t1", 2, run="r")
        await saver.aput_writes(stored[-1], [("step", 1)], "task")
        await saver.aget_tuple(config("t1"))
        [t async for t in saver.alist(config("t1"), limit=1)]
        await saver.acopy_thread("t1", "t2")
        await saver.aprune(["t2"])
        await saver.adelete_for_runs(["r"])
        await saver.adelete_thread("t2")
    spans = {s.name for s in span_exporter.get_finished_spans()}
    for op in names.LANGGRAPH_OPERATIONS:
        assert f"checkpoint.{op}" in spans
        count = registry.get_sample_value(
            names.OPERATION_DURATION + "_count", {"operation": op, "outcome": names.OK}
        )
        assert count and count >= 1, op
    assert set(names.LANGGRAPH_OPERATIONS) <= set(names.ALL_OPERATIONS)


def test_thread_key_names_round_trip_and_count_once() -> None:
    thread = "user {42}: *report*/" + uuid.uuid4().hex
    keys = thread_keys("ckpt", thread)
    parsed = [parse_thread_key("ckpt", k) for k in keys.all]
    assert [p.thread_id for p in parsed if p] == [thread] * 3
    assert [p.kind for p in parsed if p and p.kind == COUNTING_KIND] == ["idx"]
    assert keys.idx.endswith("}:idx") and keys.idx.count("{") == 1  # one hash tag
    assert parse_thread_key("ckpt", run_key("ckpt", "r")) is None
    assert parse_thread_key("ckpt", "ckpt:{u:r}:meta") is None  # a core run key
    assert parse_thread_key("other", keys.idx) is None


async def test_a_value_that_does_not_decode_is_corrupt(
    saver: SidecarSaver, client: aioredis.Redis, registry: CollectorRegistry
) -> None:
    await fill(saver, "t1", 2)
    state = thread_keys("lgt", "t1").state
    fields = [f for f in await client.hkeys(state) if f.startswith(b"b\x1f\x1fstep\x1f")]
    for field in fields:
        await client.hset(state, field, b"msgpack\x1f\xc1garbage")  # 0xc1: never valid msgpack
    with pytest.raises(SerializationError):
        await saver.aget_tuple(config("t1"))
    labels = {"operation": "lg_get_tuple", "outcome": names.CORRUPT}
    assert registry.get_sample_value(names.OPERATION_DURATION + "_count", labels) == 1
