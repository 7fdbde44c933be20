"""The seed's verbs against a real server: round trips, progress, age, cleanup, serialization."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from dataclasses import dataclass
from decimal import Decimal

import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from sidecar import (
    CheckpointConfig,
    Checkpointer,
    CheckpointFactory,
    InvalidIdentifier,
    Progress,
    RunContext,
    SectionTooLarge,
    SerializationError,
)


class Summary(BaseModel):
    title: str
    points: list[str]
    written: dt.datetime


class Color(enum.Enum):
    RED = "red"


@dataclass
class SeedContext:
    """Stands in for the seed's UserExecutionContext: any object with the two attributes."""

    user_id: str
    run_id: str
    thread_id: str = "t-1"


CTX = RunContext(user_id="alice", run_id="run-1")


async def test_save_then_load_round_trips(cp: Checkpointer) -> None:
    mgr = cp.manager(CTX)
    assert await mgr.load_section("summary") is None
    assert await mgr.save_section("summary", {"text": "hello", "n": 3}) is True
    assert await mgr.load_section("summary") == {"text": "hello", "n": 3}


async def test_factory_accepts_any_object_with_user_and_run(cp: Checkpointer) -> None:
    mgr = CheckpointFactory(cp).create_for_context(SeedContext("bob", "r9"))
    assert await mgr.save_section("summary", "s")
    assert await cp.manager(RunContext(user_id="bob", run_id="r9")).load_section("summary") == "s"


async def test_context_without_string_ids_is_rejected(cp: Checkpointer) -> None:
    with pytest.raises(InvalidIdentifier):
        cp.manager(SeedContext("bob", None))  # type: ignore[arg-type]
    with pytest.raises(InvalidIdentifier):
        cp.manager(SeedContext("", "r"))
    with pytest.raises(InvalidIdentifier):
        cp.manager(SeedContext("u" * 257, "r"))
    with pytest.raises(ValueError, match="user_id"):
        RunContext(user_id="", run_id="r")


async def test_rich_types_serialize_through_pydantic(cp: Checkpointer) -> None:
    mgr = cp.manager(CTX)
    when = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
    summary = Summary(title="Q3", points=["a", "b"], written=when)
    content = {
        "summary": summary,
        "at": when,
        "price": Decimal("12.50"),
        "id": uuid.UUID(int=7),
        "color": Color.RED,
    }
    assert await mgr.save_section("mixed", content)
    loaded = await mgr.load_section("mixed")
    assert loaded == {
        "summary": {"title": "Q3", "points": ["a", "b"], "written": "2026-11-28T12:00:00Z"},
        "at": "2026-11-28T12:00:00Z",
        "price": "12.50",
        "id": "00000000-0000-0000-0000-000000000007",
        "color": "red",
    }
    assert await mgr.save_section("summary", summary)
    assert await mgr.load_section("summary", model=Summary) == summary


async def test_unserializable_content_raises_and_writes_nothing(
    cp: Checkpointer, redis_client: aioredis.Redis
) -> None:
    mgr = cp.manager(CTX)
    with pytest.raises(SerializationError):
        await mgr.save_section("bad", {"x": object()})
    with pytest.raises(SerializationError):
        await mgr.save_section("bad", "\ud800 lone surrogate")
    assert await redis_client.dbsize() == 0


async def test_section_too_large_raises_in_best_effort_mode_too(
    redis_client: aioredis.Redis, registry: object
) -> None:
    cfg = CheckpointConfig(max_section_bytes=100, budget_ms=1000)
    async with Checkpointer(redis_client, cfg, registry=registry) as cp:  # type: ignore[arg-type]
        with pytest.raises(SectionTooLarge) as info:
            await cp.manager(CTX).save_section("big", "x" * 200)
        assert info.value.size == 202 and info.value.limit == 100
    assert await redis_client.dbsize() == 0


async def test_section_names(cp: Checkpointer) -> None:
    mgr = cp.manager(CTX)
    for name in ("a:b:c", "{x}", "*?[", "ünï çødé 🚀", "s" * 200, "o:summary", "t", "fence"):
        assert await mgr.save_section(name, name)
    assert await mgr.load_all_sections() == {
        n: n for n in ("a:b:c", "{x}", "*?[", "ünï çødé 🚀", "s" * 200, "o:summary", "t", "fence")
    }
    for bad in ("", "s" * 201, 5, "\udcff", ["summary"], {"summary": 1}):
        for _ in range(2):  # refused again once valid names are remembered
            with pytest.raises(InvalidIdentifier):
                await mgr.save_section(bad, "x")  # type: ignore[arg-type]


async def test_load_all_sections_in_completion_order(cp: Checkpointer) -> None:
    mgr = cp.manager(CTX)
    assert await mgr.load_all_sections() == {}
    for name in ("zeta", "alpha", "mid"):
        await mgr.save_section(name, {"name": name})
    await mgr.save_section("alpha", {"name": "alpha", "v": 2})  # re-save keeps its position
    loaded = await mgr.load_all_sections()
    assert list(loaded) == ["zeta", "alpha", "mid"]
    assert loaded["alpha"] == {"name": "alpha", "v": 2}


async def test_sections_without_an_order_entry_come_last_by_name(
    cp: Checkpointer, redis_client: aioredis.Redis
) -> None:
    mgr = cp.manager(CTX)
    for name in ("c", "b", "a", "d"):
        await mgr.save_section(name, name)
    await redis_client.hdel(mgr.keys.meta, "o:c", "o:b")  # e.g. meta evicted and rebuilt
    assert list(await mgr.load_all_sections()) == ["a", "d", "b", "c"]
    async with cp.run(CTX) as run:
        assert list(run.restored) == ["a", "d", "b", "c"]


async def test_progress_shape(cp: Checkpointer) -> None:
    mgr = cp.manager(CTX)
    empty = await mgr.get_progress()
    assert empty == Progress()
    before = dt.datetime.now(dt.UTC)
    await mgr.save_section("summary", 1)
    await mgr.save_section("data_analysis", 2)
    progress = await mgr.get_progress()
    assert progress.completed_sections == ["summary", "data_analysis"]
    assert progress.in_progress is None
    assert progress.total_sections == 2
    assert progress.last_update is not None and progress.last_update.tzinfo is not None
    assert abs((progress.last_update - before).total_seconds()) < 5


async def test_has_checkpoints_age_and_cleanup(
    cp: Checkpointer, redis_client: aioredis.Redis
) -> None:
    mgr = cp.manager(CTX)
    assert await mgr.has_checkpoints() is False
    assert await mgr.get_checkpoint_age() is None
    await mgr.save_section("summary", "x")
    assert await mgr.has_checkpoints() is True
    age = await mgr.get_checkpoint_age()
    assert age is not None and 0.0 <= age < 5.0
    assert await mgr.cleanup() is True
    assert await mgr.has_checkpoints() is False
    assert await redis_client.dbsize() == 0


async def test_age_comes_from_the_server_clock(
    cp: Checkpointer, redis_client: aioredis.Redis
) -> None:
    mgr = cp.manager(CTX)
    await mgr.save_section("summary", "x")
    # Pretend the last save happened 100 s earlier by the server's clock.
    sec, usec = await redis_client.time()
    await redis_client.hset(mgr.keys.meta, "t", f"{sec - 100}.{usec:06d}")
    age = await mgr.get_checkpoint_age()
    assert age is not None and 100.0 <= age < 105.0


async def test_users_and_runs_are_isolated(cp: Checkpointer) -> None:
    a = cp.manager(RunContext(user_id="alice", run_id="r"))
    b = cp.manager(RunContext(user_id="bob", run_id="r"))
    c = cp.manager(RunContext(user_id="alice", run_id="r2"))
    await a.save_section("summary", "alice")
    assert await b.load_section("summary") is None
    assert await c.has_checkpoints() is False
    await b.save_section("summary", "bob")
    assert await b.cleanup()
    assert await a.load_section("summary") == "alice"


@pytest.mark.standalone_only(
    "builds a standalone client from redis_url; cluster twin in tests/cluster/test_cluster_verbs.py"
)
async def test_client_with_decoded_responses_works(redis_url: str, registry: object) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    await client.flushall()
    async with Checkpointer(client, CheckpointConfig(budget_ms=1000), registry=registry) as cp:  # type: ignore[arg-type]
        mgr = cp.manager(CTX)
        await mgr.save_section("summary", {"a": 1})
        assert await mgr.load_all_sections() == {"summary": {"a": 1}}
        assert (await mgr.get_progress()).completed_sections == ["summary"]
        assert await mgr.get_checkpoint_age() is not None
    await client.aclose()


async def test_from_url_builds_and_closes_its_client(redis_url: str, registry: object) -> None:
    async with Checkpointer.from_url(
        redis_url,
        config=CheckpointConfig(budget_ms=1000),
        registry=registry,  # type: ignore[arg-type]
    ) as cp:
        assert cp.config.redis_url == redis_url
        assert await cp.manager(CTX).save_section("s", 1)
        assert await cp.manager(CTX).cleanup()
