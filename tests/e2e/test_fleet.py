"""End-to-end proof of the fleet design: 1, 2 and 5 sidecar processes on one Valkey, a real
Prometheus with the shipped rules, N runs expiring -> the totals, the panel and the recording
rule say N (not N x sidecars), also when a counting sidecar is SIGKILLed while runs expire.

Everything is a real process: a private Valkey, ``python -m sidecar serve`` x n (default K = 2
counting slots: with 5 sidecars, 2 count and 3 stand by), agent processes that start runs
through the library and abandon them (TTL 1 s), writing their metrics into the multiprocess
directory of the first sidecar, and Debian's Prometheus scraping every sidecar each second with
``alerts/checkpoint-rules.yml`` loaded.

Exact figures: ``sum(checkpoint_ttl_expiries_total)`` is an instant sum of counters, so it
must be exactly N. ``increase()``/``rate()`` extrapolate to the window's edges, so the panel
(``sum(increase(...[1h]))``) and the recording rule (expired per started) are checked within a
band that excludes double counting (x2 with two sidecars, x5 with five).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar import names
from sidecar.ops.rules import TTL_EXPIRED_RECORD
from sidecar.server.embedded import EmbeddedServer
from tests.ops.conftest import REPO, require_tool
from tests.server.helpers import (
    SidecarProcess,
    clean_env,
    run_agent,
    serve_args,
    start_agent,
    wait_until,
)

from .prom import PrometheusProcess

RUNS = 24
PREFIX = "fleet"
RULES = REPO / "alerts" / "checkpoint-rules.yml"
Factory = Callable[..., SidecarProcess]


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


@pytest.fixture
def prometheus_binary() -> str:
    return require_tool("prometheus")


def query(prom: PrometheusProcess, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prom.url}/api/v1/query", params={"query": expr}, timeout=5)
    body = response.json()
    assert body.get("status") == "success", f"{expr}: {body.get('error')}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def scalar(prom: PrometheusProcess, expr: str) -> float | None:
    result = query(prom, expr)
    return float(result[0]["value"][1]) if result else None


def start_fleet(
    start: Factory, server: EmbeddedServer, n: int, mp_dir: Path
) -> list[SidecarProcess]:
    first = start(*serve_args(server.url, PREFIX, "--multiproc-dir", str(mp_dir)))
    fleet = [first] + [start(*serve_args(server.url, PREFIX)) for _ in range(n - 1)]
    for sc in fleet:
        sc.wait_serving()
    counting = min(n, 2)
    wait_until(
        lambda: sum(sc.metric(names.WATCHER_COUNTING) or 0 for sc in fleet) == counting,
        f"{counting} counting sidecars",
    )
    return fleet


def warm_up(prom: PrometheusProcess, server: EmbeddedServer, mp_dir: Path, workdir: Path) -> None:
    """One completed run, scraped a few times: the started counter then has samples before the
    abandoned runs, so rate() sees them start (a series born at its final value has no rate)."""
    run_agent(server.url, PREFIX, "complete", 1, workdir, PROMETHEUS_MULTIPROC_DIR=str(mp_dir))
    started = f"sum(count_over_time({names.RUNS_STARTED}[1m]))"
    wait_until(lambda: (scalar(prom, started) or 0) >= 3, "the warm-up run scraped", timeout=30)


def abandon_runs(server: EmbeddedServer, mp_dir: Path, workdir: Path, runs: int) -> None:
    """Agent processes that start ``runs`` runs and abandon them: each expires (TTL 1 s)."""
    env = {"PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}
    agents = [
        start_agent(server.url, PREFIX, "abandon", runs // 2, workdir, **env) for _ in range(2)
    ]
    for agent in agents:
        assert agent.wait(60) == 0, f"an agent failed; see {workdir}"


def targets(fleet: list[SidecarProcess]) -> list[str]:
    return [sc.base_url.removeprefix("http://") for sc in fleet]


def within(prom: PrometheusProcess, expr: str, low: float, high: float) -> bool:
    value = scalar(prom, expr)
    return value is not None and low <= value <= high


def check_prometheus(prom: PrometheusProcess, runs: int, counting: int) -> None:
    total = f"sum({names.TTL_EXPIRIES})"
    wait_until(lambda: scalar(prom, total) == runs, f"{total} == {runs}", timeout=30)
    counting_now = f"sum({names.WATCHER_COUNTING})"
    wait_until(lambda: scalar(prom, counting_now) == counting, f"{counting_now} == {counting}")
    # rate()/increase() extrapolate by up to a scrape interval at each edge: on series tens of
    # seconds long that is a few percent, and it shrinks as the series grow. Double counting
    # (x2, x5) never enters these bands.
    panel = f"sum(increase({names.TTL_EXPIRIES}[1h]))"  # the overview panel
    wait_until(lambda: within(prom, panel, runs * 0.9, runs * 1.15), f"{panel} ~ {runs}", 45)
    # The recording rule: expired per started; every run but the warm-up one expired.
    wait_until(lambda: within(prom, TTL_EXPIRED_RECORD, 0.85, 1.15), "the record ~ 1", 45)
    assert scalar(prom, total) == runs  # nothing counted late, or twice


@pytest.mark.parametrize("n", [1, 2, 5])
def test_n_sidecars_count_each_expiry_once_in_prometheus(
    n: int,
    private_server: EmbeddedServer,
    sidecars: Factory,
    prometheus_binary: str,
    tmp_path: Path,
) -> None:
    mp_dir = tmp_path / "multiproc"
    mp_dir.mkdir()
    fleet = start_fleet(sidecars, private_server, n, mp_dir)
    prom = PrometheusProcess(prometheus_binary, tmp_path, targets(fleet), RULES).start()
    try:
        wait_until(lambda: scalar(prom, "count(up == 1)") == n, "every target scraped")
        warm_up(prom, private_server, mp_dir, tmp_path)
        abandon_runs(private_server, mp_dir, tmp_path, RUNS)
        wait_until(
            lambda: sum(sc.metric(names.TTL_EXPIRIES) or 0 for sc in fleet) == RUNS,
            "the expiries on the sidecars' /metrics",
        )
        check_prometheus(prom, RUNS, min(n, 2))
        assert sum(sc.metric(names.TTL_EXPIRIES) or 0 for sc in fleet) == RUNS
    finally:
        prom.stop()


def test_a_counting_sidecar_sigkilled_while_runs_expire_misses_nothing(
    private_server: EmbeddedServer, sidecars: Factory, prometheus_binary: str, tmp_path: Path
) -> None:
    """Three sidecars (two count). One counting sidecar is SIGKILLed, and runs expire at once,
    while its slot lease is still held by the dead process: the other counting sidecar claims
    every expiry, and the standby takes the vacant slot within seconds."""
    mp_dir = tmp_path / "multiproc"
    mp_dir.mkdir()
    fleet = start_fleet(sidecars, private_server, 3, mp_dir)
    prom = PrometheusProcess(prometheus_binary, tmp_path, targets(fleet), RULES).start()
    try:
        wait_until(lambda: scalar(prom, "count(up == 1)") == 3, "every target scraped")
        warm_up(prom, private_server, mp_dir, tmp_path)
        # Kill a counting one that is not the agents' metrics endpoint (the first sidecar).
        victim = next(sc for sc in fleet[1:] if sc.metric(names.WATCHER_COUNTING) == 1)
        survivors = [sc for sc in fleet if sc is not victim]
        victim.signal(signal.SIGKILL)
        abandon_runs(private_server, mp_dir, tmp_path, RUNS)
        wait_until(
            lambda: sum(sc.metric(names.TTL_EXPIRIES) or 0 for sc in survivors) == RUNS,
            "every expiry counted by the survivors",
        )
        wait_until(
            lambda: sum(sc.metric(names.WATCHER_COUNTING) or 0 for sc in survivors) == 2,
            "the standby to take the vacant slot",
        )
        check_prometheus(prom, RUNS, 2)
    finally:
        prom.stop()
