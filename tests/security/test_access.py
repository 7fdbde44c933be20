"""AUTH, an ACL user limited to the key prefix, TLS with a self-signed CA; and no password in
any log line, span, metric or error message."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest
import redis
from cluster_support import LocalCluster
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest
from socket_leaks import is_open, open_transports

from sidecar import CheckpointConfig, Checkpointer, CheckpointError, RunContext
from sidecar.server.cluster_watcher import ClusterExpiryWatcher
from sidecar.server.embedded import EmbeddedServer, free_port
from sidecar.server.watcher import ExpiryWatcher

from .conftest import (
    ADMIN_PASSWORD,
    AGENT_PASSWORD,
    TlsCluster,
    TlsServer,
    acl_rule,
    server_acl,
)

CTX = RunContext(user_id="alice", run_id="report-1")
PLAN = ["summary", "data_analysis"]


async def full_cycle(cp: Checkpointer) -> None:
    """Every verb, a crashed run, a resumed run (lease renewed meanwhile), cleanup."""
    mgr = cp.manager(CTX)
    assert await mgr.save_section("summary", {"a": 1})
    assert await mgr.load_section("summary") == {"a": 1}
    assert await mgr.load_all_sections() == {"summary": {"a": 1}}
    assert (await mgr.get_progress()).completed_sections == ["summary"]
    assert await mgr.has_checkpoints()
    assert await mgr.get_checkpoint_age() is not None
    with pytest.raises(RuntimeError):
        async with cp.run(CTX, plan=PLAN) as run:
            await run.step("data_analysis", lambda: "d")
            raise RuntimeError("crash")
    async with cp.run(CTX, plan=PLAN) as run:
        await asyncio.sleep(0.5)  # lease_ttl 1 s: renewed at least once
        for name in PLAN:
            await run.step(name, lambda name=name: name)
    assert run.result()["resumed_sections"] == 2
    assert await mgr.has_checkpoints() is False
    assert await cp.store.ping()


def agent_url(port: int, scheme: str = "redis", password: str = AGENT_PASSWORD) -> str:
    return f"{scheme}://agent:{password}@127.0.0.1:{port}/0"


def config(**extra: object) -> CheckpointConfig:
    settings: dict[str, object] = {"budget_ms": 2000, "strict": True, "lease_ttl_seconds": 1}
    return CheckpointConfig(**{**settings, **extra})  # type: ignore[arg-type]


def admin(port: int) -> redis.Redis:
    return redis.Redis(port=port, password=ADMIN_PASSWORD)


async def test_acl_user_runs_the_whole_workflow(auth_server: EmbeddedServer) -> None:
    with admin(auth_server.port) as a:
        a.acl_log_reset()
        a.script_flush()  # the NOSCRIPT -> EVAL path needs +eval
        async with Checkpointer.from_url(agent_url(auth_server.port), config=config()) as cp:
            await full_cycle(cp)
        assert a.acl_log() == []  # nothing the library does was refused


async def test_acl_refuses_keys_outside_the_prefix(auth_server: EmbeddedServer) -> None:
    with redis.Redis(port=auth_server.port, username="agent", password=AGENT_PASSWORD) as agent:
        with pytest.raises(redis.exceptions.NoPermissionError):
            agent.set("other:key", 1)
        with pytest.raises(redis.exceptions.NoPermissionError):
            agent.hget("ckpx:{a:b}:meta", "t")
        with pytest.raises(redis.exceptions.NoPermissionError):
            agent.keys("*")  # no -@all exceptions beyond the library's commands
        with pytest.raises(redis.exceptions.NoPermissionError):
            agent.flushall()
    cfg = config(key_prefix="other")
    async with Checkpointer.from_url(agent_url(auth_server.port), config=cfg) as cp:
        with pytest.raises(CheckpointError, match="refused the command") as info:
            await cp.manager(CTX).save_section("summary", 1)
        with pytest.raises(CheckpointError, match=r"refused the command \(NOPERM\)"):
            await cp.manager(CTX).has_checkpoints()
    assert AGENT_PASSWORD not in str(info.value)


async def test_wrong_password_is_an_error_without_the_password(auth_server: EmbeddedServer) -> None:
    async with Checkpointer.from_url(
        agent_url(auth_server.port, password="WRONG-pw-marker"), config=config()
    ) as cp:
        with pytest.raises(CheckpointError, match="unreachable") as info:
            await cp.manager(CTX).save_section("summary", 1)
    assert "WRONG-pw-marker" not in str(info.value)
    assert "AuthenticationError" in str(info.value)


def leaks(secret: str, text: str) -> bool:
    return secret in text or secret.encode().hex() in text


@pytest.mark.parametrize("where", ["good password", "wrong password", "unreachable"])
async def test_passwords_never_reach_logs_spans_metrics_or_errors(
    auth_server: EmbeddedServer, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    secret = {"good password": AGENT_PASSWORD}.get(where, "Leak-Marker-pw-0123")
    port = free_port() if where == "unreachable" else auth_server.port
    url = agent_url(port, password=secret)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = CollectorRegistry()
    errors: list[str] = []
    caplog.set_level(logging.DEBUG)
    for strict in (False, True):
        cfg = CheckpointConfig(budget_ms=2000, strict=strict, trace_identifiers=True)
        async with Checkpointer.from_url(
            url, config=cfg, registry=registry, tracer_provider=provider
        ) as cp:
            errors.append(repr(cp.config))
            try:
                async with cp.run(CTX, plan=PLAN) as run:
                    await run.step("summary", lambda: "s")
                await cp.manager(CTX).load_all_sections()
                await cp.manager(CTX).cleanup()
            except CheckpointError as exc:
                errors.extend([str(exc), repr(exc)])
    provider.shutdown()
    spans = exporter.get_finished_spans()
    assert spans
    span_text = " ".join(
        repr(dict(s.attributes or {}))
        + repr([(e.name, dict(e.attributes or {})) for e in s.events])
        + (s.status.description or "")
        for s in spans
    )
    everything = {
        "logs": caplog.text,
        "spans": span_text,
        "metrics": generate_latest(registry).decode(),
        "errors": " ".join(errors),
    }
    for name, text in everything.items():
        assert not leaks(secret, text), name
    if where != "good password":
        assert errors[1:], "the failure must be visible"


async def test_tls_with_acl_user_runs_the_whole_workflow(tls_server: TlsServer) -> None:
    url = agent_url(tls_server.tls_port, "rediss") + f"?ssl_ca_certs={tls_server.certs.ca}"
    async with Checkpointer.from_url(url, config=config()) as cp:
        await full_cycle(cp)
        pool = cp.store.client.connection_pool  # type: ignore[union-attr]
        assert pool.connection_class.__name__ == "SSLConnection"


async def test_tls_server_signed_by_an_unknown_ca_is_refused(tls_server: TlsServer) -> None:
    url = agent_url(tls_server.tls_port, "rediss") + f"?ssl_ca_certs={tls_server.certs.other_ca}"
    async with Checkpointer.from_url(url, config=config()) as cp:
        with pytest.raises(CheckpointError, match="unreachable") as info:
            await cp.manager(CTX).save_section("summary", 1)
    assert AGENT_PASSWORD not in str(info.value)


async def test_plaintext_client_on_the_tls_port_gets_nothing(tls_server: TlsServer) -> None:
    url = agent_url(tls_server.tls_port)
    async with Checkpointer.from_url(url, config=config(budget_ms=300)) as cp:
        with pytest.raises(CheckpointError):
            await cp.manager(CTX).save_section("summary", 1)


CLUSTER_EXTRA = ["+cluster|slots", "+command"]  # redis-py's topology discovery


async def test_acl_user_on_a_cluster(redis_cluster: LocalCluster) -> None:
    rule = [*acl_rule(), *CLUSTER_EXTRA]
    for port in redis_cluster.ports():
        server_acl(port, rule)
    try:
        url = agent_url(redis_cluster.nodes[0].port, "redis+cluster")
        async with Checkpointer.from_url(url, config=config()) as cp:
            await full_cycle(cp)
        for port in redis_cluster.ports():
            with redis.Redis(port=port) as node:
                assert node.acl_log() == [], port
    finally:
        for port in redis_cluster.ports():
            with redis.Redis(port=port) as node:
                node.acl_deluser("agent")
                node.acl_log_reset()


async def test_tls_cluster_with_acl_user_and_the_expiry_watcher(tls_cluster: TlsCluster) -> None:
    """Every verb over TLS on a cluster (redis-py learns the nodes' TLS ports from CLUSTER
    SLOTS), and the sidecar's watcher counting expiries on every primary over TLS."""
    cluster, ca = tls_cluster, tls_cluster.certs.ca
    for port in cluster.ports():
        server_acl(port, [*acl_rule(), *CLUSTER_EXTRA])
    seed = cluster.tls_ports[cluster.nodes[0].port]
    url = agent_url(seed, "rediss+cluster") + f"?ssl_ca_certs={ca}"
    async with Checkpointer.from_url(url, config=config()) as cp:
        await cp.connect()  # discovery and a TLS handshake per primary, outside any budget
        primaries = cp.store.client.get_primaries()  # type: ignore[union-attr]
        assert all(node._connections for node in primaries)
        await full_cycle(cp)
        nodes = cp.store.client.get_nodes()  # type: ignore[union-attr]
        assert {n.port for n in nodes} <= set(cluster.tls_ports.values())
        assert {n.connection_class.__name__ for n in nodes} == {"SSLConnection"}

    watcher = ClusterExpiryWatcher(f"rediss+cluster://127.0.0.1:{seed}/0?ssl_ca_certs={ca}", "ckpt")
    watching = asyncio.create_task(watcher.run())
    try:
        await wait_until(watcher.state.ever_subscribed.is_set, "watcher never subscribed")
        assert [p for _, p in watcher.primaries] == sorted(
            cluster.tls_ports[p] for p in cluster.primary_ports()
        )
        short = config(ttl_seconds=1)
        ctxs = [RunContext(user_id="tls", run_id=f"r{i}") for i in range(9)]
        async with Checkpointer.from_url(url, config=short) as cp:
            for ctx in ctxs:
                assert await cp.manager(ctx).save_section("s", 1)
        await wait_until(lambda: watcher.state.ttl_expiries >= len(ctxs), "expiries not counted")
        assert watcher.state.ttl_expiries == len(ctxs)
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)


async def wait_until(predicate: Callable[[], bool], what: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_a_stopped_watcher_leaves_no_tls_socket_open(tls_server: TlsServer) -> None:
    """redis-py closes a pub/sub connection without waiting for the close, and on TLS closing
    is a round trip with the server: a sidecar stopping (or a test ending) right after its
    watcher stopped left that socket open, reported later as unclosed. The watcher now waits
    for the close briefly, then aborts it: when its task is done, its sockets are shut, even
    with the server frozen (it never answers the close)."""
    url = f"rediss://127.0.0.1:{tls_server.tls_port}/0?ssl_ca_certs={tls_server.certs.ca}"
    before = open_transports()
    watcher = ExpiryWatcher(url, "ckpt")
    watching = asyncio.create_task(watcher.run())
    try:
        await wait_until(watcher.state.ever_subscribed.is_set, "watcher never subscribed")
        opened = open_transports() - before
        assert opened, "the watcher's TLS connection should be open while it watches"
        tls_server.server.pause()
        try:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            still_open = [t for t in opened if is_open(t)]
        finally:
            tls_server.server.resume()
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
    assert still_open == []


async def test_a_closed_checkpointer_leaves_no_tls_socket_open(tls_server: TlsServer) -> None:
    """A budget timeout interrupts a read; redis-py then drops that connection without waiting
    for the close, and on TLS the close needs the server. Closing the Checkpointer waits for it
    briefly, then aborts it: even with the server frozen, no socket of ours stays open."""
    url = agent_url(tls_server.tls_port, "rediss") + f"?ssl_ca_certs={tls_server.certs.ca}"
    before = open_transports()
    cp = Checkpointer.from_url(url, config=config(budget_ms=200, strict=False))
    try:
        assert await cp.manager(CTX).save_section("summary", 1)
        opened = open_transports() - before
        assert opened, "the Checkpointer's TLS connection should be open after a save"
        tls_server.server.pause()
        try:
            assert await cp.manager(CTX).save_section("summary", 2) is False  # over budget
            await cp.aclose()
            still_open = [t for t in opened if is_open(t)]
        finally:
            tls_server.server.resume()
    finally:
        await cp.aclose()
    assert still_open == []
