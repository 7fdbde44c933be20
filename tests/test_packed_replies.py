"""Packed script replies: the Lua ``pack`` and ``sidecar.core.packed`` agree on any bytes.

The reading scripts (resume view, load all, acquire + restore) answer a run's sections and
meta as one ``<len>,<len>,...;<parts>`` string instead of one RESP element per field, because
redis-py's pure-Python parser costs more per element than per byte. These tests run the real
Lua on the real server: binary values, separators inside values, empty strings, multi-byte
text through a client that decodes responses.
"""

from __future__ import annotations

import random

import pytest
import redis.asyncio as aioredis

from sidecar import CheckpointConfig, Checkpointer, RunContext
from sidecar.core.packed import packed_pairs, unpack
from sidecar.lua import PACK

PACK_ARGV = PACK + "return pack(ARGV)\n"

TRICKY: list[tuple[str, bytes]] = [
    ("summary", b'{"text": "plain"}'),
    ("", b""),
    (":", b":"),
    ("12:", b"3:abc"),
    ("0:", b"0:"),
    ("ü日本🚀", "ü日本🚀 é".encode()),
    ("nul", b"\x00\x01\xff\xfe:\r\n$5\r\n"),
]


def _random_pairs(seed: int, count: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    alphabet = "ab:0123456789ü🚀 "
    return [
        (
            "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12))),
            bytes(rng.randrange(256) for _ in range(rng.randrange(0, 3000))),
        )
        for _ in range(count)
    ]


async def test_lua_packed_and_packed_pairs_agree_on_any_bytes(
    redis_client: aioredis.Redis,
) -> None:
    for pairs in (TRICKY, _random_pairs(1, 50), _random_pairs(2, 1), []):
        argv = [part for name, value in pairs for part in (name.encode(), value)]
        blob = await redis_client.eval(PACK_ARGV, 0, *argv)  # type: ignore[misc]
        assert packed_pairs(blob) == pairs
        assert unpack(blob) == argv
    odd = [b"a", b"", b";", b"3,4;"]
    assert unpack(await redis_client.eval(PACK_ARGV, 0, *odd)) == odd  # type: ignore[misc]


@pytest.mark.parametrize(
    "blob",
    [b"5;abc", b"3,4;abcd", b"abc", b"1;a", b"x;ab", b"1,1,1;abc", b";x", b"1;ab", b"-1;"],
    ids=["short", "short-second", "no-semicolon", "name-without-value", "bad-length",
         "three-parts", "trailing", "long", "negative"],
)  # fmt: skip
def test_a_damaged_packed_reply_is_refused(blob: bytes) -> None:
    with pytest.raises(ValueError, match="a packed reply"):
        packed_pairs(blob)


def test_nothing_packed_is_no_pairs() -> None:
    assert packed_pairs(b"") == [] == packed_pairs("") == packed_pairs(None)
    assert packed_pairs(b";") == [] == unpack(b";")


@pytest.mark.standalone_only("builds a standalone client from redis_url")
async def test_multibyte_sections_through_a_decoding_client(
    redis_url: str, registry: object
) -> None:
    """Byte lengths, not character counts: a client with ``decode_responses=True`` gets the
    packed reply as text, and every section still comes back whole."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    ctx = RunContext(user_id="ü-user", run_id="🚀-run")
    content = {
        name: {"text": f"{name}: ü日本🚀 " * (i + 3), "n": i}
        for i, name in enumerate(["summary", "data_analysis", "recommendations", "action_items"])
    }
    try:
        async with Checkpointer(client, CheckpointConfig(budget_ms=1000), registry=registry) as cp:  # type: ignore[arg-type]
            mgr = cp.manager(ctx)
            await mgr.cleanup()
            for name, value in content.items():
                assert await mgr.save_section(name, value)
            assert await mgr.load_all_sections() == content
            view = await mgr.resume_view()
            assert view is not None
            assert view.sections == content
            assert list(view.sections) == list(content)  # completion order
            assert view.progress.completed_sections == list(content)
            async with cp.run(ctx, plan=[*content, "appendix"]) as run:
                assert run.restored == content
                assert run.remaining == ["appendix"]
            await mgr.cleanup()
    finally:
        await client.aclose()
