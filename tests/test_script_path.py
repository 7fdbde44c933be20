"""Scripts go straight to a pooled connection on a plain client, and through redis-py's
``execute_command`` whenever something hooks it (:mod:`sidecar.core.direct`)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from sidecar import CheckpointConfig, Checkpointer, CheckpointRefused, RunContext, SyncCheckpointer
from sidecar.core.direct import pack
from sidecar.core.ops import Command
from sidecar.server.embedded import EmbeddedServer
from sidecar.store import Store
from sidecar.sync.store import SyncStore, build_sync_client

CTX = RunContext(user_id="u", run_id="r")
CONTENT = {"text": "what the agent wrote"}


@pytest.fixture
def url(redis_server: EmbeddedServer) -> str:
    with redis.Redis.from_url(redis_server.url) as admin:
        admin.flushall()
    return redis_server.url


class Recording(redis.Redis):
    """A subclass that overrides ``execute_command``, as some applications do."""

    seen: list[str]

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.seen.append(str(args[0]))
        return super().execute_command(*args, **options)


class AsyncRecording(aioredis.Redis):
    seen: list[str]

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.seen.append(str(args[0]))
        return await super().execute_command(*args, **options)


def sync_cp(client: redis.Redis) -> SyncCheckpointer:
    return SyncCheckpointer(client, CheckpointConfig(budget_ms=1000), registry=CollectorRegistry())


def save_and_load(client: redis.Redis) -> None:
    with sync_cp(client) as cp:
        mgr = cp.manager(CTX)
        assert mgr.save_section("summary", CONTENT) is True
        assert mgr.load_all_sections() == {"summary": CONTENT}


async def asave_and_load(client: aioredis.Redis) -> None:
    async with Checkpointer(
        client, CheckpointConfig(budget_ms=1000), registry=CollectorRegistry()
    ) as cp:
        mgr = cp.manager(CTX)
        assert await mgr.save_section("summary", CONTENT) is True
        assert await mgr.load_all_sections() == {"summary": CONTENT}


def test_a_plain_client_sends_scripts_on_its_pool(url: str) -> None:
    client = build_sync_client(url)
    assert SyncStore(client)._direct.pool_for("EVALSHA") is client.connection_pool
    save_and_load(client)
    client.close()


async def test_a_plain_async_client_sends_scripts_on_its_pool(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    assert Store(client)._direct.pool_for("EVALSHA") is client.connection_pool
    await asave_and_load(client)
    await client.aclose()


def test_noscript_on_the_direct_path_falls_back_to_eval(url: str) -> None:
    client = build_sync_client(url)
    with sync_cp(client) as cp:
        mgr = cp.manager(CTX)
        assert mgr.save_section("summary", CONTENT) is True
        client.script_flush()
        assert mgr.save_section("data_analysis", CONTENT) is True
        client.script_flush()
        assert mgr.load_all_sections() == {"summary": CONTENT, "data_analysis": CONTENT}
    client.close()


async def test_noscript_on_the_async_direct_path_falls_back_to_eval(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    async with Checkpointer(
        client, CheckpointConfig(budget_ms=1000), registry=CollectorRegistry()
    ) as cp:
        mgr = cp.manager(CTX)
        assert await mgr.save_section("summary", CONTENT) is True
        await client.script_flush()
        assert await mgr.load_all_sections() == {"summary": CONTENT}
    await client.aclose()


def test_an_overridden_execute_command_sees_every_script(url: str) -> None:
    client = Recording.from_url(url)
    client.seen = []
    assert SyncStore(client)._direct.pool_for("EVALSHA") is None
    save_and_load(client)
    assert client.seen.count("EVALSHA") >= 2  # the save and the load
    client.close()


async def test_an_overridden_async_execute_command_sees_every_script(url: str) -> None:
    client = AsyncRecording.from_url(url)
    client.seen = []
    await asave_and_load(client)
    assert client.seen.count("EVALSHA") >= 2
    await client.aclose()


def test_instrumentation_patched_in_later_sees_every_script(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = build_sync_client(url)
    with sync_cp(client) as cp:
        mgr = cp.manager(CTX)
        assert mgr.save_section("summary", CONTENT) is True
        seen: list[str] = []
        original = redis.Redis.execute_command

        @functools.wraps(original)
        def traced(self: redis.Redis, *args: Any, **options: Any) -> Any:
            seen.append(str(args[0]))
            return original(self, *args, **options)

        monkeypatch.setattr(redis.Redis, "execute_command", traced)
        assert mgr.save_section("data_analysis", CONTENT) is True
        assert seen == ["EVALSHA"]
    client.close()


def test_a_single_connection_client_goes_through_redis_py(url: str) -> None:
    client = redis.Redis.from_url(url, single_connection_client=True)
    assert SyncStore(client)._direct.pool_for("EVALSHA") is None
    save_and_load(client)
    client.close()


async def test_a_single_connection_async_client_goes_through_redis_py(url: str) -> None:
    client = aioredis.Redis.from_url(url, single_connection_client=True)
    assert Store(client)._direct.pool_for("EVALSHA") is None
    await asave_and_load(client)
    await client.aclose()


@pytest.fixture
def redis_py_metrics() -> Iterator[None]:
    """redis-py's own OpenTelemetry metrics switched on (its global instance), then off."""
    from redis.observability.config import OTelConfig
    from redis.observability.providers import get_observability_instance

    instance = get_observability_instance()
    instance.init(OTelConfig())
    yield
    instance.shutdown()
    assert instance.get_provider_manager() is None  # later tests take the direct path again


@pytest.mark.usefixtures("redis_py_metrics")
def test_redis_py_metrics_switched_on_keep_redis_py_s_path(url: str) -> None:
    client = build_sync_client(url)
    assert SyncStore(client)._direct.pool_for("EVALSHA") is None
    save_and_load(client)
    client.close()


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_the_packer_writes_what_redis_py_writes(encoding: str) -> None:
    conn = redis.Connection(encoding=encoding)
    keys = ("ckpt:{usér:r}:sections", "ckpt:{usér:r}:progress")
    args = ("summary", b"\x00\xff payload", 3_600_000, -1, 0.25, "", 0)
    ours = pack(b"EVALSHA", ("a" * 40, len(keys)), keys, args, conn.encoder)
    theirs = b"".join(conn.pack_command("EVALSHA", "a" * 40, len(keys), *keys, *args))
    assert ours == theirs


@pytest.mark.parametrize("arg", [True, None, [1]])
def test_the_packer_refuses_what_redis_py_refuses(arg: object) -> None:
    with pytest.raises(TypeError, match="cannot send"):
        pack(b"EVALSHA", ("a" * 40, 1), ("k",), (arg,), redis.Connection().encoder)  # type: ignore[arg-type]


# --- the asyncio shell's own checkout (DirectPath.lean) -----------------------------------------


async def test_a_plain_pool_lends_its_connections_without_its_wrappers(url: str) -> None:
    """Calls that succeed, get an error reply or are cancelled all give their connection
    back (or drop it): nothing is left marked in use, and the pool keeps reusing one."""
    client = aioredis.Redis.from_url(url)
    pool = client.connection_pool
    store = Store(client)
    assert store._direct.lean
    taken: list[int] = []
    plain_get = pool.get_connection

    async def counted_get(*args: Any, **kwargs: Any) -> Any:
        taken.append(1)
        return await plain_get(*args, **kwargs)

    pool.get_connection = counted_get  # type: ignore[method-assign]
    async with Checkpointer(
        client, CheckpointConfig(budget_ms=1000), registry=CollectorRegistry()
    ) as cp:
        mgr = cp.manager(CTX)
        for _ in range(5):
            assert await mgr.save_section("summary", CONTENT) is True
        assert await mgr.load_all_sections() == {"summary": CONTENT}
        assert taken == []  # never through get_connection
        assert not pool._in_use_connections and len(pool._available_connections) == 1
        await client.set("not-a-hash", "x")
        with pytest.raises(CheckpointRefused):  # an error reply keeps the connection
            await store.send("x", Command("HGET", ("not-a-hash",), ("f",)), 1.0)
        assert not pool._in_use_connections and len(pool._available_connections) == 1
    await client.aclose()


async def test_a_cancelled_lean_call_drops_its_connection(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    pool = client.connection_pool
    store = Store(client)
    await client.ping()
    slow = Command("WAIT", (), (1, 300))  # no replica: answers after 300 ms
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await store.send("x", slow, 1.0)
    assert not pool._in_use_connections
    assert all(not c.is_connected for c in pool._available_connections)  # reply in flight
    assert await client.ping()
    await client.aclose()


@pytest.mark.parametrize(
    "make",
    [
        lambda url: aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(url, max_connections=2)
        ),
        lambda url: aioredis.Redis.from_url(
            url, credential_provider=redis.UsernamePasswordCredentialProvider("default", "")
        ),
    ],
    ids=["blocking-pool", "credential-provider"],
)
async def test_pools_that_need_their_wrappers_keep_them(url: str, make: Any) -> None:
    """A BlockingConnectionPool waits and notifies in get_connection/release; a credential
    provider re-authenticates on release: both keep redis-py's checkout."""
    client = make(url)
    store = Store(client)
    assert store._direct.pool_for("EVALSHA") is client.connection_pool
    assert not store._direct.lean
    await asave_and_load(client)
    assert not client.connection_pool._in_use_connections
    await client.aclose()
    await client.connection_pool.aclose()  # a pool passed in is not the client's to close


@pytest.mark.parametrize("pool_kind", ["plain", "blocking"])
async def test_connections_the_server_closed_are_reopened_not_failed(
    url: str, pool_kind: str
) -> None:
    """After a restart, an idle ``timeout`` or CLIENT KILL, the next call on each pooled
    connection reconnects instead of failing (redis-py 8's asyncio pool skips that check when
    maintenance notifications are "auto", its default): strict mode would raise an outage."""
    if pool_kind == "plain":
        client = aioredis.Redis.from_url(url)
    else:
        client = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(url, max_connections=4)
        )
    config = CheckpointConfig(budget_ms=1000, strict=True)
    async with Checkpointer(client, config, registry=CollectorRegistry()) as cp:
        await cp.connect(connections=3)
        mgr = cp.manager(CTX)
        assert await mgr.save_section("summary", CONTENT) is True
        for _ in range(2):
            admin = aioredis.Redis.from_url(url)
            assert await admin.client_kill_filter(_type="normal", skipme=True) >= 3
            await admin.aclose()
            await asyncio.sleep(0.1)  # the close reaches this loop
            found = await asyncio.gather(*(mgr.load_all_sections() for _ in range(3)))
            assert found == [{"summary": CONTENT}] * 3
    await client.aclose()
    await client.connection_pool.aclose()  # a pool passed in is not the client's to close


def test_sync_connections_the_server_closed_are_reopened_too(url: str) -> None:
    client = build_sync_client(url)
    with SyncCheckpointer(
        client, CheckpointConfig(budget_ms=1000, strict=True), registry=CollectorRegistry()
    ) as cp:
        mgr = cp.manager(CTX)
        assert mgr.save_section("summary", CONTENT) is True
        with redis.Redis.from_url(url) as admin:
            assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
        assert mgr.load_all_sections() == {"summary": CONTENT}
    client.close()
