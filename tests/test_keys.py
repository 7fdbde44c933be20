"""Identifier encoding: injective, glob-proof, one hash slot per run; hostile ids isolated."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from redis.crc import key_slot

from sidecar import CheckpointConfig, Checkpointer, InvalidIdentifier, RunContext
from sidecar.keys import parse_key, run_keys, validate_prefix

HOSTILE = [
    "a:b",
    "a",
    "b:c",
    "*",
    "?",
    "[a-z]",
    "{x}",
    "}{",
    "%3A",
    ":",
    "a b",
    "ü",
    "🚀",
    "\\",
    "%",
]
ids = st.text(min_size=1, max_size=40).filter(
    lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)
)


def test_colons_cannot_make_two_pairs_collide() -> None:
    assert run_keys("ckpt", "a:b", "c") != run_keys("ckpt", "a", "b:c")
    assert run_keys("ckpt", "%3A", "x") != run_keys("ckpt", ":", "x")


def test_keys_contain_no_glob_or_brace_from_identifiers() -> None:
    for user in HOSTILE:
        keys = run_keys("ckpt", user, "r*?[]")
        tag = keys.sections.split("{", 1)[1].split("}", 1)[0]
        assert not set(tag) & set("*?[]{} ")
        assert keys.sections.count("{") == 1
        assert keys.sections.count("}") == 1


@given(ids, ids)
def test_parse_round_trips(user: str, run: str) -> None:
    keys = run_keys("ckpt", user, run)
    for key, kind in ((keys.sections, "sections"), (keys.meta, "meta"), (keys.lease, "lease")):
        parsed = parse_key("ckpt", key)
        assert parsed is not None
        assert (parsed.user_id, parsed.run_id, parsed.kind) == (user, run, kind)
        assert parse_key("ckpt", key.encode()) == parsed
    assert len({key_slot(k.encode()) for k in keys.all}) == 1


@given(st.tuples(ids, ids), st.tuples(ids, ids))
def test_encoding_is_injective(a: tuple[str, str], b: tuple[str, str]) -> None:
    if a != b:
        assert set(run_keys("p", *a).all).isdisjoint(run_keys("p", *b).all)


def test_parse_rejects_foreign_keys() -> None:
    for key in ("other:{a:b}:meta", "ckpt:{a:b}:other", "ckpt:{ab}:meta", "ckpt:{a:b:c}:meta",
                "ckpt:a:b:meta", "ckpt:{:b}:meta", b"ckpt:{\xff:b}:meta", "ckpt:{%ff:b}:meta"):  # fmt: skip
        assert parse_key("ckpt", key) is None, key


def test_invalid_identifiers_and_prefixes() -> None:
    for bad in ("", "x" * 257, None, 5, "\udc80"):
        with pytest.raises(InvalidIdentifier):
            run_keys("ckpt", bad, "r")
        with pytest.raises(InvalidIdentifier):
            run_keys("ckpt", "u", bad)
    run_keys("ckpt", "x" * 256, "y" * 256)
    for prefix in ("", "a:b", "a{b}", "a*", "x" * 65):
        with pytest.raises(InvalidIdentifier):
            validate_prefix(prefix)
    with pytest.raises(ValueError, match="key_prefix"):
        CheckpointConfig(key_prefix="bad:prefix")


@pytest.mark.standalone_only(
    "builds a standalone client from redis_url; cluster twin in tests/cluster/test_cluster_verbs.py"
)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pairs=st.lists(st.tuples(st.sampled_from(HOSTILE) | ids, st.sampled_from(HOSTILE) | ids),
                      min_size=2, max_size=5, unique=True))  # fmt: skip
def test_distinct_pairs_never_see_each_others_data(
    redis_url: str, pairs: list[tuple[str, str]]
) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        cfg = CheckpointConfig(budget_ms=2000)
        try:
            async with Checkpointer(client, cfg, registry=CollectorRegistry()) as cp:
                managers = [cp.manager(RunContext(user_id=u, run_id=r)) for u, r in pairs]
                for i, mgr in enumerate(managers):
                    await mgr.cleanup()
                    assert await mgr.save_section("summary", {"owner": i})
                # the first one cleans up: nobody else's data may go with it
                assert await managers[0].cleanup()
                for i, mgr in enumerate(managers[1:], start=1):
                    assert await mgr.load_all_sections() == {"summary": {"owner": i}}
                    assert (await mgr.get_progress()).completed_sections == ["summary"]
                    await mgr.cleanup()
        finally:
            await client.aclose()

    asyncio.run(scenario())
