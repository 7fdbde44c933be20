"""The sidecar's least-privilege ACL user (docs/security.md, "Sidecar ACL user"), for real:
two sidecar processes with that user elect, subscribe, claim and count, and hand a slot back,
and ``ACL LOG`` stays empty; on a cluster too, with the cluster additions."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from cluster_support import LocalCluster

from sidecar import names
from sidecar.keys import run_keys
from sidecar.server.embedded import EmbeddedServer
from tests.server.helpers import SidecarProcess, clean_env, serve_args, wait_until

from .conftest import server_acl

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
Factory = Callable[..., SidecarProcess]


def documented_rule() -> list[str]:
    """The ``ACL SETUSER checkpoint-sidecar ...`` line under the heading, as tokens."""
    section = DOC.read_text().split("## Sidecar ACL user", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"^ACL SETUSER checkpoint-sidecar (.+)$", section, re.MULTILINE)
    assert match, "no ACL SETUSER line under 'Sidecar ACL user'"
    return match.group(1).replace(">CHANGE-ME", ">pw-side").replace("~ckpt:*", "~acl:*").split()


@pytest.fixture
def sidecars(tmp_path: Path) -> Iterator[Factory]:
    started: list[SidecarProcess] = []

    def start(*args: str) -> SidecarProcess:
        proc = SidecarProcess(list(args), tmp_path, clean_env()).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


def test_the_documented_sidecar_user_runs_a_fleet_with_an_empty_acl_log(
    private_server: EmbeddedServer, sidecars: Factory
) -> None:
    rule = documented_rule()
    assert "+set" in rule and "&__keyevent@*__:evicted" in rule
    server_acl(private_server.port, rule, user="checkpoint-sidecar")
    with redis.Redis(port=private_server.port) as admin:
        admin.config_set("notify-keyspace-events", "")  # the sidecar turns them on itself
        admin.acl_log_reset()
        url = f"redis://checkpoint-sidecar:pw-side@127.0.0.1:{private_server.port}/0"
        fleet = [sidecars(*serve_args(url, "acl")).wait_serving() for _ in range(3)]
        wait_until(
            lambda: sum(sc.metric(names.WATCHER_COUNTING) or 0 for sc in fleet) == 2,
            "two counting sidecars",
        )
        counting = [sc for sc in fleet if sc.metric(names.WATCHER_COUNTING) == 1]
        assert all(sc.readyz()[1]["expiry_events"] == "confirmed" for sc in counting)
        for i in range(5):
            admin.set(run_keys("acl", "u", f"r{i}").meta, b"x", px=1)
        wait_until(
            lambda: sum(sc.metric(names.TTL_EXPIRIES) or 0 for sc in fleet) == 5, "5 expiries"
        )
        leaving = next(sc for sc in fleet if sc.metric(names.WATCHER_COUNTING) == 1)
        assert leaving.signal(signal.SIGTERM) == 0  # hands its slot back (owner-checked DEL)
        others = [sc for sc in fleet if sc is not leaving]
        wait_until(
            lambda: sum(sc.metric(names.WATCHER_COUNTING) or 0 for sc in others) == 2,
            "the standby to take the slot",
        )
        admin.set(run_keys("acl", "u", "last").meta, b"x", px=1)
        wait_until(lambda: sum(sc.metric(names.TTL_EXPIRIES) or 0 for sc in others) >= 1, "counted")
        assert admin.acl_log() == []
        flags = admin.config_get("notify-keyspace-events")["notify-keyspace-events"]
        assert set(flags) >= set("Exe")


CLUSTER_EXTRA = ["+cluster|nodes", "+cluster|slots", "+command"]  # docs/security.md says so


def test_the_documented_sidecar_user_on_a_cluster(
    redis_cluster: LocalCluster, sidecars: Factory
) -> None:
    rule = [*documented_rule(), *CLUSTER_EXTRA]
    ports = redis_cluster.ports()
    for port in ports:
        server_acl(port, rule, user="checkpoint-sidecar")
        with redis.Redis(port=port) as node:
            node.acl_log_reset()
    try:
        seed = redis_cluster.nodes[0].port
        url = f"redis+cluster://checkpoint-sidecar:pw-side@127.0.0.1:{seed}/0"
        sc = sidecars(*serve_args(url, "acl")).wait_serving()
        wait_until(lambda: sc.metric(names.WATCHER_COUNTING) == 1, "counting on every primary")
        owners = set()
        for i in range(12):
            key = run_keys("acl", "u", f"c{i}").meta
            owners.add(redis_cluster.owner_port(key))
            with redis.Redis(port=redis_cluster.owner_port(key)) as node:
                node.set(key, b"x", px=1)
        assert len(owners) == 3
        wait_until(lambda: sc.metric(names.TTL_EXPIRIES) == 12, "12 expiries")
        assert sc.signal(signal.SIGTERM) == 0
        for port in ports:
            with redis.Redis(port=port) as node:
                assert node.acl_log() == [], port
    finally:
        for port in ports:
            with redis.Redis(port=port) as node:
                node.acl_deluser("checkpoint-sidecar")
                node.acl_log_reset()
