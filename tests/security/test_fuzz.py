"""Fuzzing identifiers, section names and payloads (hypothesis) against a real server.

Every input either round-trips or raises one of our errors (the one the input calls for), and
never touches another run's keys: a canary run's keys are byte-for-byte unchanged afterwards
and no key outside the two runs appears. Inputs include lone surrogates (text that is not
valid Unicode), bytes that are not valid UTF-8, identifiers and names just over their limits,
huge identifiers and payloads (bounded so the test stays fast), and hostile characters.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from sidecar import (
    CheckpointConfig,
    Checkpointer,
    CheckpointError,
    InvalidIdentifier,
    RunContext,
    SectionTooLarge,
    SerializationError,
)
from sidecar.keys import MAX_ID_CHARS, MAX_SECTION_CHARS

LIMIT = 64 * 1024
CANARY = RunContext(user_id="canary", run_id="canary-run")
SURROGATE = st.sampled_from(["\ud800", "\udfff", "\udc80", "\udbff\udbff"])
HOSTILE = ["*", "?", "[a-z]", "{x}", "}{", ":", "a:b", "%3A", "%", "\\", " ", "\x00", "🚀", "ü"]


def around(limit: int) -> st.SearchStrategy[str]:
    return st.integers(limit - 2, limit + 2).map(lambda n: "é" * n)


def spoiled(base: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(lambda a, s, b: a + s + b, base, SURROGATE, base)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Nine draws in ten from ``good``: invalid inputs are cheap to refuse, valid ones matter."""
    return st.integers(0, 9).flatmap(lambda i: bad if i == 0 else good)


identifiers = mostly(
    st.one_of(st.text(min_size=1, max_size=30), st.sampled_from(HOSTILE), around(MAX_ID_CHARS - 2)),
    st.one_of(
        spoiled(st.text(max_size=5)),
        around(MAX_ID_CHARS + 3),
        st.integers(1_000, 50_000).map(lambda n: "u" * n),
        st.sampled_from(["", None, 7, b"bytes-id"]),
    ),
)
section_names = mostly(
    st.one_of(
        st.text(min_size=1, max_size=30),
        st.sampled_from([*HOSTILE, "o:summary", "ip", "t", "fence", "seq", "total"]),
        around(MAX_SECTION_CHARS - 2),
    ),
    st.one_of(
        spoiled(st.text(max_size=5)), around(MAX_SECTION_CHARS + 3), st.sampled_from(["", None, 3])
    ),
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    spoiled(st.text(max_size=3)),
    st.binary(max_size=8),
)
payloads = mostly(
    st.recursive(
        leaves,
        lambda kids: (
            st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4)
        ),
        max_leaves=15,
    ),
    st.one_of(
        st.integers(LIMIT - 8, LIMIT + 8).map(lambda n: "x" * n),
        st.integers(LIMIT, 2_000_000).map(lambda n: ["y" * (n // 4)] * 4),
    ),
)


def valid_text(value: object, limit: int) -> bool:
    if not isinstance(value, str) or not value or len(value) > limit:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Refused(Exception):
    """The payload cannot be represented: SerializationError expected."""


def normal(content: Any) -> Any:
    """What a round trip gives back (JSON): bytes as UTF-8 text; lone surrogates refused."""
    if isinstance(content, bytes):
        try:
            return content.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused from None
    if isinstance(content, str):
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            raise Refused from None
        return content
    if isinstance(content, list):
        return [normal(c) for c in content]
    if isinstance(content, dict):
        return {k: normal(v) for k, v in content.items()}
    return content


def rough_size(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(rough_size(c) for c in content)
    return 0


async def fuzz_once(url: str, user: object, run: object, section: object, content: Any) -> None:
    client = aioredis.Redis.from_url(url)
    cfg = CheckpointConfig(budget_ms=5000, max_section_bytes=LIMIT)
    async with Checkpointer(client, cfg, registry=CollectorRegistry(), close_client=True) as cp:
        canary = cp.manager(CANARY)
        await client.flushall()
        assert await canary.save_section("kept", {"mine": True})
        before = {k: await client.dump(k) for k in await client.keys("*")}

        ids_ok = valid_text(user, MAX_ID_CHARS) and valid_text(run, MAX_ID_CHARS)
        if not ids_ok:
            event("identifier refused")
            with pytest.raises(InvalidIdentifier):
                cp.manager(RunContext.model_construct(user_id=user, run_id=run))
            return
        mgr = cp.manager(RunContext(user_id=user, run_id=run))  # type: ignore[arg-type]
        try:
            expected = normal(content)
        except Refused:
            expected = Refused
        try:
            saved = await mgr.save_section(section, content)  # type: ignore[arg-type]
        except InvalidIdentifier:
            event("section name refused")
            assert not valid_text(section, MAX_SECTION_CHARS)
        except SerializationError:
            event("payload refused")
            assert expected is Refused
        except SectionTooLarge:
            event("payload too large")
            assert expected is not Refused and rough_size(content) > LIMIT // 2
        except CheckpointError as exc:  # any other error of ours would be an outage
            pytest.fail(f"unexpected {exc!r}")
        else:
            event("round trip")
            assert saved is True
            assert valid_text(section, MAX_SECTION_CHARS) and expected is not Refused
            assert await mgr.load_section(section) == expected  # type: ignore[arg-type]
            assert await mgr.load_all_sections() == {section: expected}
            assert (await mgr.get_progress()).completed_sections == [section]
        own = set(mgr.keys.all)
        after = {k: await client.dump(k) for k in await client.keys("*")}
        assert {k: v for k, v in after.items() if k.decode() not in own} == before
        assert await mgr.cleanup()
        assert await canary.load_all_sections() == {"kept": {"mine": True}}


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                            HealthCheck.too_slow,
                                                            HealthCheck.data_too_large],
)  # fmt: skip
@given(user=identifiers, run=identifiers, section=section_names, content=payloads)
def test_any_input_round_trips_or_raises_ours_and_stays_in_its_run(
    redis_url: str, user: object, run: object, section: object, content: Any
) -> None:
    asyncio.run(fuzz_once(redis_url, user, run, section, content))
