"""Sealed sections in a real Redis (and the cluster): what is stored holds no plaintext, a
ciphertext moved elsewhere is refused, rotation, wrong key, corruption, legacy values, and key
material never leaks into logs, spans, metrics, errors or repr."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from sidecar import CheckpointConfig, Checkpointer, IntegrityError, RunContext
from sidecar.keys import run_keys
from sidecar.seal import describe

from .conftest import new_key

pytestmark = pytest.mark.backends("standalone", "cluster")

MARKER = "MARKER-5c1e-PLAINTEXT"
CTX = RunContext(user_id="user-1", run_id="run-1")
OTHER = RunContext(user_id="user-1", run_id="run-2")


def content(text: str, size: int) -> dict[str, Any]:
    body = (text * (size // max(1, len(text)) + 1))[:size]
    return {"title": MARKER, "body": body, "note": f"{MARKER} inside the body too"}


def make(
    redis_client: aioredis.Redis,
    registry: CollectorRegistry,
    tracer_provider: TracerProvider | None = None,
    **settings: Any,
) -> Checkpointer:
    return Checkpointer(
        redis_client,
        CheckpointConfig(budget_ms=2000, **settings),
        registry=registry,
        tracer_provider=tracer_provider,
    )


async def every_stored_byte(client: aioredis.Redis) -> bytes:
    """Every key name, field and value in the keyspace, concatenated (test-only SCAN)."""
    out = bytearray()
    for key in await client.keys("*"):
        out += key
        kind = await client.type(key)
        if kind == b"hash":
            for field, value in (await client.hgetall(key)).items():
                out += field + value
        elif kind == b"string":
            out += await client.get(key) or b""
    return bytes(out)


@pytest.mark.parametrize("compression", ["none", "zstd", "deflate"])
async def test_stored_values_hold_no_plaintext(
    redis_client: aioredis.Redis, registry: CollectorRegistry, report_text: str, compression: str
) -> None:
    async with make(
        redis_client, registry, compression=compression, encryption_keys=[new_key("k1")]
    ) as cp:
        mgr = cp.manager(CTX)
        for i, size in enumerate((30, 600, 2000, 20000)):
            assert await mgr.save_section(f"s{i}", content(report_text, size))
        stored = await every_stored_byte(redis_client)
        assert MARKER.encode() not in stored
        assert b"Python" not in stored  # nor the real text around it
        raw = await redis_client.hget(run_keys("ckpt", CTX.user_id, CTX.run_id).sections, "s3")
        assert describe(raw) == {
            "format": 1, "codec": compression, "encrypted": True, "key_id": "k1",
        }  # fmt: skip
        loaded = await mgr.load_all_sections()
        assert loaded["s3"] == content(report_text, 20000)
        assert await mgr.load_section("s0") == content(report_text, 30)


async def test_without_encryption_the_same_search_finds_the_marker(
    redis_client: aioredis.Redis, registry: CollectorRegistry, report_text: str
) -> None:
    """The control: the search above does find plaintext when it is there."""
    async with make(redis_client, registry, compression="none") as cp:
        assert await cp.manager(CTX).save_section("s", content(report_text, 2000))
        assert MARKER.encode() in await every_stored_byte(redis_client)


@pytest.mark.parametrize("compression", ["zstd", "deflate"])
async def test_compression_stores_less_and_counts_both_sizes(
    redis_client: aioredis.Redis, registry: CollectorRegistry, report_text: str, compression: str
) -> None:
    async with make(redis_client, registry, compression=compression) as cp:
        mgr = cp.manager(CTX)
        value = content(report_text, 20000)
        assert await mgr.save_section("s", value)
        assert await mgr.load_section("s") == value
    keys = run_keys("ckpt", CTX.user_id, CTX.run_id)
    raw = await redis_client.hget(keys.sections, "s")
    assert describe(raw)["codec"] == compression

    def sample(name: str, op: str) -> float:
        value = registry.get_sample_value(name, {"operation": op})
        assert value is not None
        return value

    for op in ("save_section", "load_section"):
        logical = sample("checkpoint_section_bytes_sum", op)
        stored = sample("checkpoint_section_stored_bytes_sum", op)
        assert stored == len(raw)
        assert logical / stored > {"zstd": 2.5, "deflate": 2.3}[compression]


async def move(client: aioredis.Redis, src: RunContext, src_field: str, dst: RunContext,
               dst_field: str) -> None:  # fmt: skip
    value = await client.hget(run_keys("ckpt", src.user_id, src.run_id).sections, src_field)
    assert value is not None
    await client.hset(run_keys("ckpt", dst.user_id, dst.run_id).sections, dst_field, value)


@pytest.mark.parametrize("strict", [False, True])
async def test_a_ciphertext_moved_to_another_run_or_section_is_refused(
    redis_client: aioredis.Redis, registry: CollectorRegistry, strict: bool
) -> None:
    async with make(redis_client, registry, encryption_keys=[new_key("k1")], strict=strict) as cp:
        a, b = cp.manager(CTX), cp.manager(OTHER)
        assert await a.save_section("summary", {"secret": MARKER})
        assert await b.save_section("summary", {"other": "run"})
        await move(redis_client, CTX, "summary", OTHER, "summary")  # another run
        with pytest.raises(IntegrityError, match="'summary': stored value failed authentication"):
            await b.load_section("summary")
        with pytest.raises(IntegrityError):
            await b.load_all_sections()
        with pytest.raises(IntegrityError):
            await b.resume_view()
        await move(redis_client, CTX, "summary", CTX, "action_items")  # another section
        with pytest.raises(IntegrityError, match="'action_items'"):
            await a.load_section("action_items")
        assert await a.load_section("summary") == {"secret": MARKER}  # the original still opens
    corrupt = registry.get_sample_value(
        "checkpoint_operation_duration_seconds_count",
        {"operation": "load_section", "outcome": "corrupt"},
    )
    assert corrupt == 2
    assert (
        registry.get_sample_value(
            "checkpoint_operation_duration_seconds_count",
            {"operation": "load_all_sections", "outcome": "corrupt"},
        )
        == 1
    )


async def test_rotation_and_wrong_keys(
    redis_client: aioredis.Redis, registry: CollectorRegistry
) -> None:
    k1, k2 = new_key("k1"), new_key("k2")
    sections = run_keys("ckpt", CTX.user_id, CTX.run_id).sections
    async with make(redis_client, registry, encryption_keys=[k1]) as before:
        assert await before.manager(CTX).save_section("old", {"v": 1})
    async with make(redis_client, registry, encryption_keys=[k2, k1]) as rotated:
        mgr = rotated.manager(CTX)
        assert await mgr.load_section("old") == {"v": 1}  # old key still decrypts
        assert await mgr.save_section("new", {"v": 2})
        assert describe(await redis_client.hget(sections, "new"))["key_id"] == "k2"
        assert await mgr.load_all_sections() == {"old": {"v": 1}, "new": {"v": 2}}
    async with make(redis_client, registry, encryption_keys=[k2]) as retired:
        with pytest.raises(IntegrityError, match="key id 'k1', which is not configured"):
            await retired.manager(CTX).load_section("old")
    async with make(redis_client, registry, encryption_keys=[new_key("k2")]) as wrong:
        with pytest.raises(IntegrityError, match="failed authentication"):
            await wrong.manager(CTX).load_section("new")


async def test_a_corrupted_value_is_refused_and_a_run_produces_it_again(
    redis_client: aioredis.Redis, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    sections = run_keys("ckpt", CTX.user_id, CTX.run_id).sections
    async with make(redis_client, registry, encryption_keys=[new_key("k1")]) as cp:
        mgr = cp.manager(CTX)
        assert await mgr.save_section("summary", {"text": MARKER})
        assert await mgr.save_section("actions", {"text": "fine"})
        raw = bytearray(await redis_client.hget(sections, "summary"))
        raw[-5] ^= 0x40
        await redis_client.hset(sections, "summary", bytes(raw))
        with pytest.raises(IntegrityError):
            await mgr.load_section("summary")
        produced: list[str] = []

        def produce(name: str) -> dict[str, str]:
            produced.append(name)
            return {"text": f"again {name}"}

        with caplog.at_level(logging.DEBUG, logger="sidecar"):
            async with cp.run(CTX, plan=["summary", "actions"]) as run:
                assert run.restored == {"actions": {"text": "fine"}}
                for name in ("summary", "actions"):
                    await run.step(name, lambda name=name: produce(name))
        assert produced == ["summary"]  # the corrupted one only, produced again
        assert run.result()["report"] == {"summary": {"text": "again summary"},
                                          "actions": {"text": "fine"}}  # fmt: skip
    assert "'summary'" in caplog.text
    assert MARKER not in caplog.text
    assert registry.get_sample_value("checkpoint_sections_total", {"source": "discarded"}) == 1


async def test_legacy_plain_values_still_read(
    redis_client: aioredis.Redis, registry: CollectorRegistry
) -> None:
    """Values written before this format (plain JSON, no header) are read, unless encryption
    is required with read_unencrypted=False."""
    sections = run_keys("ckpt", CTX.user_id, CTX.run_id).sections
    await redis_client.hset(sections, "legacy", b'{"written": "by 0.1.0"}')
    async with make(redis_client, registry, encryption_keys=[new_key("k1")]) as cp:
        assert await cp.manager(CTX).load_section("legacy") == {"written": "by 0.1.0"}
    async with make(
        redis_client, registry, encryption_keys=[new_key("k1")], read_unencrypted=False
    ) as required:
        with pytest.raises(IntegrityError, match="not encrypted"):
            await required.manager(CTX).load_section("legacy")


@pytest.fixture
async def decoding_client(redis_url: str, backend: str) -> AsyncIterator[Any]:
    from redis.asyncio.cluster import RedisCluster

    from sidecar.store import close_client

    client: Any
    if backend == "cluster":
        client = RedisCluster.from_url(
            redis_url.replace("redis+cluster://", "redis://"), decode_responses=True
        )
    else:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await close_client(client)


async def test_a_decoding_client_cannot_hold_encrypted_values(
    decoding_client: Any, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError, match="decode_responses=False"):
        Checkpointer(decoding_client, CheckpointConfig(encryption_keys=[new_key("k1")]))
    with caplog.at_level(logging.WARNING, logger="sidecar"):
        cp = Checkpointer(decoding_client, CheckpointConfig(compression="zstd"), registry=registry)
    assert cp.sealer.identity
    assert "compression is off" in caplog.text


async def test_key_material_never_leaks(
    redis_client: aioredis.Redis,
    registry: CollectorRegistry,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    k1, k2 = new_key("k1"), new_key("k2")
    secrets = [k.split(":", 1)[1] for k in (k1, k2)]
    raw_keys = [base64.b64decode(s) for s in secrets]
    seen: list[str] = []
    with caplog.at_level(logging.DEBUG):
        async with make(
            redis_client, registry, tracer_provider, encryption_keys=[k1, k2],
            trace_identifiers=True,
        ) as cp:  # fmt: skip
            mgr = cp.manager(CTX)
            assert await mgr.save_section("s", {"v": MARKER})
            await mgr.load_all_sections()
            seen += [repr(cp.config), str(cp.config), repr(cp.sealer), repr(cp.config.keyring)]
            await move(redis_client, CTX, "s", OTHER, "s")
            try:
                await cp.manager(OTHER).load_section("s")
            except IntegrityError as exc:
                seen += [str(exc), repr(exc)]
        async with make(redis_client, registry, encryption_keys=[new_key("k1")]) as wrong:
            try:
                await wrong.manager(CTX).load_section("s")
            except IntegrityError as exc:
                seen += [str(exc), repr(exc)]
    assert len(seen) == 8
    spans = span_exporter.get_finished_spans()
    assert spans
    seen += [span.to_json() for span in spans]
    seen.append(caplog.text)
    exposition = generate_latest(registry)
    for text in seen:
        for secret in secrets:
            assert secret not in text
            assert secret[:16] not in text
    for key in raw_keys:
        assert key not in exposition
        assert key.hex() not in "".join(seen)
    for secret in secrets:
        assert secret.encode() not in exposition


@pytest.mark.backends("standalone")
@pytest.mark.parametrize("encrypted", [True, False])
async def test_rdb_and_aof_files_hold_no_plaintext(
    server_binary: str, tmp_path: Any, registry: CollectorRegistry, report_text: str,
    encrypted: bool,
) -> None:  # fmt: skip
    """What reaches the disk (RDB snapshot, AOF), and so backups: no plaintext once encrypted.
    RDB string compression is off so that the search cannot miss plaintext compressed by LZF;
    the unencrypted run is the control (the search finds the marker there)."""
    from sidecar.server.embedded import EmbeddedServer
    from sidecar.store import close_client

    data = tmp_path / "data"
    settings: dict[str, Any] = {"compression": "none"}
    if encrypted:
        settings["encryption_keys"] = [new_key("k1")]
    with EmbeddedServer(
        binary=server_binary, data_dir=data, appendonly=True,
        extra_args=("--rdbcompression", "no", "--appendfsync", "always"),
    ) as server:  # fmt: skip
        client = aioredis.Redis.from_url(server.url, socket_timeout=None)
        try:
            async with make(client, registry, **settings) as cp:
                for i, size in enumerate((100, 2000, 20000)):
                    assert await cp.manager(CTX).save_section(f"s{i}", content(report_text, size))
            await client.save()
        finally:
            await close_client(client)
        files = [p for p in data.rglob("*") if p.is_file() and p.name != "server.log"]
        assert {p.suffix for p in files} >= {".rdb", ".aof"}
        found = [p.name for p in files if MARKER.encode() in p.read_bytes()]
    if encrypted:
        assert found == []
    else:
        assert any(name.endswith(".rdb") for name in found)
        assert any(".aof" in name for name in found)


async def test_sealed_values_with_refresh_ttl_on_read(
    redis_client: aioredis.Redis, registry: CollectorRegistry, report_text: str
) -> None:
    """The sliding-TTL read paths (scripts instead of HGET) open sealed values the same way."""
    value = content(report_text, 5000)
    async with make(
        redis_client, registry, encryption_keys=[new_key("k1")], refresh_ttl_on_read=True
    ) as cp:
        mgr = cp.manager(CTX)
        assert await mgr.save_section("s", value)
        assert await mgr.load_section("s") == value
        assert await mgr.load_all_sections() == {"s": value}
        view = await mgr.resume_view()
        assert view is not None
        assert view.sections == {"s": value}
