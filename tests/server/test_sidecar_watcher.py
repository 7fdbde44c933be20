"""The TTL-expiry watcher, through a sidecar subprocess and real agent processes."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from sidecar import names
from sidecar.keys import run_keys
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
    for key in client.scan_iter(count=1000):
        client.exists(key)  # touching an expired key expires it now
    return client.dbsize() == 0


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
    assert samples[names.WATCHER_UP] == 1
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


def test_existing_notify_flags_are_kept_and_E_x_added(
    private_server: EmbeddedServer, client: redis.Redis, sidecar_factory: Factory
) -> None:
    client.config_set("notify-keyspace-events", "Kgl")  # keyspace events for generic + list
    sc = sidecar_factory(*serve_args(private_server.url, "flags")).wait_serving()
    flags = client.config_get("notify-keyspace-events")["notify-keyspace-events"]
    assert set(flags) == set("KglEx")
    status, body = sc.readyz()
    assert (status, body["expiry_events"]) == (200, "confirmed")
    assert sc.metric(names.WATCHER_UP) == 1


def test_config_refused_warns_once_and_keeps_serving(
    private_server: EmbeddedServer, client: redis.Redis, sidecar_factory: Factory, tmp_path: Path
) -> None:
    client.acl_setuser(
        "watcher", enabled=True, passwords=["+pw-s3cret"], keys=["~*"], channels=["*"],
        commands=["+@all", "-config"],
    )  # fmt: skip
    url = f"redis://watcher:pw-s3cret@127.0.0.1:{private_server.port}/0"
    sc = sidecar_factory(*serve_args(url, "acl")).wait_serving()
    status, body = sc.readyz()
    assert status == 200
    assert body["expiry_events"] == "unconfirmed"
    assert sc.metric(names.WATCHER_UP) == 0
    assert sc.metric(names.REDIS_UP) == 1
    warnings = [line for line in sc.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, sc.stderr
    assert "notify-keyspace-events" in warnings[0]
    assert "Ex" in warnings[0]
    assert "pw-s3cret" not in sc.stderr + sc.stdout
    # The server's own setting ("Ex", from the fixture) still delivers events: still counted.
    run_agent(private_server.url, "acl", "expire", 1, tmp_path)
    wait_until(lambda: sc.metric(names.TTL_EXPIRIES) == 1, "an expiry despite unconfirmed")


def test_redis_restart_is_survived_and_later_expiries_counted(
    private_server: EmbeddedServer, sidecar_factory: Factory, tmp_path: Path
) -> None:
    sc = sidecar_factory(*serve_args(private_server.url, "rs")).wait_serving()
    assert sc.readyz()[0] == 200
    port = private_server.port
    private_server.stop()
    _, body = wait_until(lambda: (s := sc.readyz())[0] == 503 and s, "/readyz to say 503")
    assert body["redis"] == "down"
    assert sc.metric(names.REDIS_UP) == 0
    assert sc.metric(names.WATCHER_UP) == 0
    assert sc.get("/healthz")[0] == 200
    # It comes back on the same port with its own settings: expiry events off.
    restarted = EmbeddedServer(
        port=port, binary=private_server.binary, extra_args=("--notify-keyspace-events", "")
    )
    with restarted:
        wait_until(lambda: sc.readyz()[0] == 200, "/readyz to say 200 again")
        assert sc.metric(names.WATCHER_RECONNECTS) == 1
        with redis.Redis.from_url(restarted.url) as c:
            flags = c.config_get("notify-keyspace-events")["notify-keyspace-events"]
        assert set(flags) >= set("Ex")
        run_agent(restarted.url, "rs", "expire", 2, tmp_path)
        wait_until(lambda: sc.metric(names.TTL_EXPIRIES) == 2, "expiries after the restart")
        assert sc.metric(names.WATCHER_UP) == 1
        assert sc.signal(signal.SIGTERM) == 0


def test_subscribe_refused_fails_at_start_with_one_line(
    private_server: EmbeddedServer, client: redis.Redis, sidecar_factory: Factory
) -> None:
    client.acl_setuser(
        "nosub", enabled=True, passwords=["+pw-nosub"], keys=["~*"], commands=["+@all"]
    )  # no channel permission: SUBSCRIBE is refused
    url = f"redis://nosub:pw-nosub@127.0.0.1:{private_server.port}/0"
    sc = sidecar_factory(*serve_args(url, "nosub", "--connect-timeout", "20"))
    assert sc.wait(30) == 1
    errors = [line for line in sc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, sc.stderr
    assert "__keyevent@*__:expired" in errors[0]
    assert "Traceback" not in sc.stderr
    assert "pw-nosub" not in sc.stderr


# The least a dedicated sidecar user needs (docs/sidecar.md shows this exact rule).
SIDECAR_ACL = (
    "on >pw-side resetkeys resetchannels &__keyevent@*__:expired -@all +ping +hello "
    "+client|setname +client|setinfo +subscribe +unsubscribe +config|get +config|set"
)


def test_the_documented_least_privilege_acl_is_enough(
    private_server: EmbeddedServer, client: redis.Redis, sidecar_factory: Factory
) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "sidecar.md").read_text()
    assert SIDECAR_ACL.replace(">pw-side", ">CHANGE-ME") in doc
    client.execute_command("ACL", "SETUSER", "checkpoint-sidecar", *SIDECAR_ACL.split())
    client.config_set("notify-keyspace-events", "")
    url = f"redis://checkpoint-sidecar:pw-side@127.0.0.1:{private_server.port}/0"
    sc = sidecar_factory(*serve_args(url, "least")).wait_serving()
    assert sc.readyz() == (
        200,
        {"status": "ready", "redis": "up", "watcher": "subscribed", "expiry_events": "confirmed"},
    )
    expire_marker(client, "least", "m")
    wait_until(lambda: sc.metric(names.TTL_EXPIRIES) == 1, "an expiry seen by the ACL user")


def test_a_frozen_server_is_noticed_and_recovered(
    private_server: EmbeddedServer, sidecar_factory: Factory
) -> None:
    sc = sidecar_factory(*serve_args(private_server.url, "frozen")).wait_serving()
    private_server.pause()  # SIGSTOP: the socket stays open, nothing answers
    try:
        wait_until(lambda: sc.readyz()[0] == 503, "/readyz to notice the silent server")
    finally:
        private_server.resume()
    wait_until(lambda: sc.readyz()[0] == 200, "/readyz to recover")
    assert sc.metric(names.WATCHER_UP) == 1
