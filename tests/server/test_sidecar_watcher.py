"""The TTL-expiry watcher, through a sidecar subprocess and real agent processes."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from sidecar import names
from sidecar.keys import parse_key, run_keys
from sidecar.server.embedded import EmbeddedServer

from .helpers import SidecarProcess, run_agent, serve_args, start_agent, wait_until

Factory = Callable[..., SidecarProcess]


@pytest.fixture
def client(private_server: EmbeddedServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(private_server.url) as c:
        yield c


def expire_marker(client: redis.Redis, prefix: str, name: str) -> None:
    """A run of ``prefix`` that expires at once: events arrive in order, so once the marker
    is counted every earlier expiry has been counted too."""
    client.set(run_keys(prefix, "marker", name).meta, b"x", px=1)


def all_keys_gone(client: redis.Redis) -> bool:
    """Every run key expired (the sidecars' own slot leases and claims are not run keys)."""
    left = 0
    for key in client.scan_iter(count=1000):
        if client.exists(key) and parse_key(key.split(b":", 1)[0].decode(), key) is not None:
            left += 1  # touching an expired key (exists) expires it now
    return left == 0


def test_counts_exactly_the_runs_that_expired(
    private_server: EmbeddedServer, client: redis.Redis, sidecar_factory: Factory, tmp_path: Path
) -> None:
    sc = sidecar_factory(*serve_args(private_server.url, "exp")).wait_serving()
    assert sc.metric(names.TTL_EXPIRIES) == 0
    run_agent(private_server.url, "exp", "expire", 3, tmp_path)  # 3 runs, TTL 1 s
    run_agent(private_server.url, "exp", "complete", 2, tmp_path)  # cleaned: never expire
    run_agent(private_server.url, "other", "expire", 2, tmp_path)  # another prefix
    wait_until(lambda: sc.metric(names.TTL_EXPIRIES) == 3, "3 expiries on /metrics")
    wait_until(lambda: all_keys_gone(client), "every key to expire")
    expire_marker(client, "exp", "m1")
    wait_until(lambda: sc.metric(names.TTL_EXPIRIES) == 4, "the marker expiry")
    samples = sc.samples()
    assert samples[names.TTL_EXPIRIES] == 4  # 3 expired + marker: no cleaned run, no other prefix
    assert samples[names.LEASE_EXPIRIES] == 0
    assert samples[names.RUN_EVICTIONS] == 0
    assert samples[names.WATCHER_UP] == 1
    assert samples[names.WATCHER_COUNTING] == 1
    assert samples[names.REDIS_UP] == 1


def test_a_worker_killed_holding_a_run_is_a_lease_expiry(
    private_server: EmbeddedServer, client: redis.Redis, sidecar_factory: Factory, tmp_path: Path
) -> None:
    sc = sidecar_factory(*serve_args(private_server.url, "hold")).wait_serving()
    agent = start_agent(private_server.url, "hold", "hold", 1, tmp_path)
    lease_key = run_keys("hold", f"user-{agent.pid}", "run-0").lease
    wait_until(lambda: client.exists(lease_key), "the agent to take its lease")
    agent.send_signal(signal.SIGKILL)
    agent.wait(10)
    wait_until(lambda: sc.metric(names.LEASE_EXPIRIES) == 1, "the lease expiry")
    wait_until(lambda: sc.metric(names.TTL_EXPIRIES) == 1, "the abandoned run to expire")


def test_existing_notify_flags_are_kept_and_E_x_e_added(
    private_server: EmbeddedServer, client: redis.Redis, sidecar_factory: Factory
) -> None:
    client.config_set("notify-keyspace-events", "Kgl")  # keyspace events for generic + list
    sc = sidecar_factory(*serve_args(private_server.url, "flags")).wait_serving()
    wait_until(lambda: sc.metric(names.WATCHER_UP) == 1, "the watcher to count")
    flags = client.config_get("notify-keyspace-events")["notify-keyspace-events"]
    assert set(flags) == set("KglExe")
    status, body = sc.readyz()
    assert (status, body["expiry_events"]) == (200, "confirmed")


def test_config_refused_warns_once_and_keeps_serving(
    private_server: EmbeddedServer, client: redis.Redis, sidecar_factory: Factory, tmp_path: Path
) -> None:
    client.acl_setuser(
        "watcher", enabled=True, passwords=["+pw-s3cret"], keys=["~*"], channels=["*"],
        commands=["+@all", "-config"],
    )  # fmt: skip
    url = f"redis://watcher:pw-s3cret@127.0.0.1:{private_server.port}/0"
    sc = sidecar_factory(*serve_args(url, "acl")).wait_serving()
    wait_until(lambda: sc.metric(names.REDIS_UP) == 1, "Redis to be connected")
    wait_until(lambda: " WARNING " in sc.stderr, "the warning")
    status, body = sc.readyz()
    assert status == 200
    assert body["expiry_events"] == "unconfirmed"
    assert sc.metric(names.WATCHER_UP) == 0
    assert sc.metric(names.REDIS_UP) == 1
    warnings = [line for line in sc.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, sc.stderr
    assert "notify-keyspace-events" in warnings[0]
    assert "Exe" in warnings[0]
    assert "pw-s3cret" not in sc.stderr + sc.stdout
    # The server's own setting ("Ex", from the fixture) still delivers events: still counted.
    run_agent(private_server.url, "acl", "expire", 1, tmp_path)
    wait_until(lambda: sc.metric(names.TTL_EXPIRIES) == 1, "an expiry despite unconfirmed")


def test_redis_restart_is_survived_and_later_expiries_counted(
    private_server: EmbeddedServer, sidecar_factory: Factory, tmp_path: Path
) -> None:
    sc = sidecar_factory(*serve_args(private_server.url, "rs")).wait_serving()
    wait_until(lambda: sc.metric(names.WATCHER_COUNTING) == 1, "the watcher to count")
    port = private_server.port
    private_server.stop()
    _, body = wait_until(lambda: (s := sc.readyz())[1]["redis"] == "down" and s, "redis down")
    # Ready all the same: /readyz gates the whole agent pod, a Redis outage must not.
    assert sc.readyz()[0] == 200
    assert body["watcher"] != "counting"
    assert sc.metric(names.REDIS_UP) == 0
    assert sc.metric(names.WATCHER_UP) == 0
    assert sc.metric(names.WATCHER_COUNTING) == 0
    assert sc.get("/healthz")[0] == 200
    # It comes back on the same port with its own settings: expiry events off.
    restarted = EmbeddedServer(
        port=port, binary=private_server.binary, extra_args=("--notify-keyspace-events", "")
    )
    with restarted:
        wait_until(lambda: sc.metric(names.WATCHER_COUNTING) == 1, "counting again")
        assert sc.readyz()[1]["redis"] == "up"
        assert sc.metric(names.WATCHER_RECONNECTS) == 1
        with redis.Redis.from_url(restarted.url) as c:
            flags = c.config_get("notify-keyspace-events")["notify-keyspace-events"]
        assert set(flags) >= set("Exe")
        run_agent(restarted.url, "rs", "expire", 2, tmp_path)
        wait_until(lambda: sc.metric(names.TTL_EXPIRIES) == 2, "expiries after the restart")
        assert sc.metric(names.WATCHER_UP) == 1
        assert sc.signal(signal.SIGTERM) == 0


def test_subscribe_refused_keeps_serving_and_says_why(
    private_server: EmbeddedServer, client: redis.Redis, sidecar_factory: Factory
) -> None:
    """A refused SUBSCRIBE is a configuration error: logged, shown on /readyz's body and the
    gauges; the agents' metrics are still served (the sidecar used to exit, and the pod
    crash-looped)."""
    client.acl_setuser(
        "nosub", enabled=True, passwords=["+pw-nosub"], keys=["~*"], commands=["+@all"]
    )  # no channel permission: SUBSCRIBE is refused
    url = f"redis://nosub:pw-nosub@127.0.0.1:{private_server.port}/0"
    sc = sidecar_factory(*serve_args(url, "nosub")).wait_serving()
    _, body = wait_until(lambda: (s := sc.readyz())[1].get("error") and s, "the refusal")
    assert "__keyevent@0__:expired" in body["error"]
    assert sc.readyz()[0] == 200
    assert sc.metric(names.WATCHER_UP) == 0
    assert sc.metric(names.WATCHER_COUNTING) == 0
    assert sc.process is not None and sc.process.poll() is None
    warnings = [line for line in sc.stderr.splitlines() if " WARNING " in line]
    assert warnings and all("expiry watcher lost Redis" in w for w in warnings), sc.stderr
    assert "Traceback" not in sc.stderr
    assert "pw-nosub" not in sc.stderr + sc.stdout + str(body)


def test_a_frozen_server_is_noticed_and_recovered(
    private_server: EmbeddedServer, sidecar_factory: Factory
) -> None:
    sc = sidecar_factory(*serve_args(private_server.url, "frozen")).wait_serving()
    wait_until(lambda: sc.metric(names.WATCHER_COUNTING) == 1, "the watcher to count")
    private_server.pause()  # SIGSTOP: the socket stays open, nothing answers
    try:
        wait_until(lambda: sc.metric(names.WATCHER_UP) == 0, "the silent server to be noticed")
        assert sc.readyz()[0] == 200  # the pod stays ready
    finally:
        private_server.resume()
    wait_until(lambda: sc.metric(names.WATCHER_COUNTING) == 1, "the watcher to recover")
    assert sc.metric(names.WATCHER_UP) == 1


def test_an_expired_langgraph_thread_counts_once(
    private_server: EmbeddedServer, client: redis.Redis, sidecar_factory: Factory
) -> None:
    """A LangGraph thread (sidecar.langgraph) is counted by its index key: once per thread,
    however many keys it has; its claim and its other keys are not counted."""
    pytest.importorskip("langgraph.checkpoint.base", reason="the langgraph extra")
    from langgraph.checkpoint.base import empty_checkpoint

    from sidecar import CheckpointConfig, SyncCheckpointer
    from sidecar.langgraph import SidecarSaver

    sc = sidecar_factory(*serve_args(private_server.url, "lgw")).wait_serving()
    cfg = CheckpointConfig(key_prefix="lgw", ttl_seconds=1, budget_ms=2000)
    with SyncCheckpointer.from_url(private_server.url, config=cfg) as cp:
        saver = SidecarSaver(cp)
        for thread in ("t1", "t2"):
            config: dict[str, Any] = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
            for _ in range(3):
                config = saver.put(config, empty_checkpoint(), {"source": "loop", "step": 1}, {})
    wait_until(lambda: sc.metric(names.TTL_EXPIRIES) == 2, "2 thread expiries on /metrics")
    wait_until(lambda: all_keys_gone(client), "every key to expire")
    expire_marker(client, "lgw", "m1")
    wait_until(lambda: sc.metric(names.TTL_EXPIRIES) == 3, "the marker expiry")
    assert sc.metric(names.LEASE_EXPIRIES) == 0
