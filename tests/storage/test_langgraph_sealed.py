"""The LangGraph saver seals its blobs like sections when encryption keys are configured: no
channel value in clear in any stored byte, the graph state comes back, a wrong key refuses."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from langgraph.checkpoint.base import Checkpoint, empty_checkpoint
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer
from prometheus_client import CollectorRegistry

from sidecar import CheckpointConfig, Checkpointer, SerializationError
from sidecar.errors import IntegrityError
from sidecar.langgraph import SidecarSaver
from sidecar.seal import SealCipher
from sidecar.server.embedded import EmbeddedServer

from .conftest import new_key
from .test_sealed_redis import every_stored_byte

MARKER = "MARKER-langgraph-PLAINTEXT"


def config(thread: str, checkpoint_id: str | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": ""}
    if checkpoint_id:
        conf["checkpoint_id"] = checkpoint_id
    return {"configurable": conf}


async def put_one(saver: SidecarSaver, thread: str, text: str) -> dict[str, Any]:
    cp: Checkpoint = empty_checkpoint()
    cp["channel_values"] = {"doc": {"text": text, "tag": MARKER}, "step": 1}
    cp["channel_versions"] = {"doc": 1, "step": 1}
    md: dict[str, Any] = {"source": "loop", "step": 1, "parents": {}}
    result = await saver.aput(config(thread), cp, md, {"doc": 1, "step": 1})  # type: ignore[arg-type]
    await saver.aput_writes(result, [("doc", {"pending": MARKER})], task_id="t1")  # type: ignore[arg-type]
    return result  # type: ignore[no-any-return]


async def test_saver_blobs_are_sealed(
    private_server: EmbeddedServer, registry: CollectorRegistry, report_text: str
) -> None:
    key = new_key("k1")
    client = aioredis.Redis.from_url(private_server.url, socket_timeout=None)
    try:
        cfg = CheckpointConfig(key_prefix="lgs", budget_ms=2000, encryption_keys=[key])
        async with Checkpointer.from_url(private_server.url, config=cfg, registry=registry) as cp:
            saver = SidecarSaver(cp).with_allowlist([("builtins", "dict")])  # as graphs derive it
            assert isinstance(saver.serde, EncryptedSerializer)
            assert isinstance(saver.serde.cipher, SealCipher)
            result = await put_one(saver, "thread-1", report_text[:5000])
            stored = await every_stored_byte(client)
            assert MARKER.encode() not in stored
            assert b"Python" not in stored
            found = await saver.aget_tuple(result)  # type: ignore[arg-type]
            assert found is not None
            assert found.checkpoint["channel_values"]["doc"]["tag"] == MARKER
            assert found.pending_writes == [("t1", "doc", {"pending": MARKER})]
        wrong = CheckpointConfig(key_prefix="lgs", budget_ms=2000, encryption_keys=[new_key("k1")])
        async with Checkpointer.from_url(
            private_server.url, config=wrong, registry=CollectorRegistry()
        ) as cp:
            with pytest.raises((SerializationError, IntegrityError)):
                await SidecarSaver(cp).aget_tuple(result)  # type: ignore[arg-type]
    finally:
        await client.aclose()


async def test_without_keys_the_saver_stores_as_before(
    private_server: EmbeddedServer, registry: CollectorRegistry
) -> None:
    client = aioredis.Redis.from_url(private_server.url, socket_timeout=None)
    try:
        cfg = CheckpointConfig(key_prefix="lgp", budget_ms=2000)
        async with Checkpointer.from_url(private_server.url, config=cfg, registry=registry) as cp:
            saver = SidecarSaver(cp)
            assert not isinstance(saver.serde, EncryptedSerializer)
            await put_one(saver, "thread-1", "plain")
            assert MARKER.encode() in await every_stored_byte(client)
    finally:
        await client.aclose()
