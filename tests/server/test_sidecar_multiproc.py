"""Several agent processes, one multiprocess directory, one /metrics for the pod."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sidecar import names
from sidecar.server.embedded import EmbeddedServer

from .helpers import SidecarProcess, clean_env, serve_args, start_agent

Factory = Callable[..., SidecarProcess]


def run_agents(url: str, mp_dir: Path, workdir: Path, counts: tuple[int, ...]) -> None:
    agents = [
        start_agent(url, "mp", "complete", n, workdir, PROMETHEUS_MULTIPROC_DIR=str(mp_dir))
        for n in counts
    ]
    for agent in agents:
        assert agent.wait(60) == 0, f"an agent failed; see {workdir}"


def test_metrics_of_two_agent_processes_are_summed(
    private_server: EmbeddedServer, sidecar_factory: Factory, tmp_path: Path
) -> None:
    mp_dir = tmp_path / "multiproc"
    mp_dir.mkdir()
    sc = sidecar_factory(
        *serve_args(private_server.url, "mp", "--multiproc-dir", str(mp_dir))
    ).wait_serving()
    run_agents(private_server.url, mp_dir, tmp_path, (3, 5))
    samples = sc.samples()
    assert samples[f'{names.RUNS_STARTED}{{mode="fresh"}}'] == 8
    assert samples[f'{names.RUNS_FINISHED}{{status="completed"}}'] == 8
    count = f'{names.OPERATION_DURATION}_count{{operation="lease_acquire",outcome="ok"}}'
    assert samples[count] == 8
    bucket = (
        f'{names.OPERATION_DURATION}_bucket{{le="+Inf",operation="lease_acquire",outcome="ok"}}'
    )
    assert samples[bucket] == 8
    assert samples[names.BUDGET_SECONDS] == 2.0  # a setting: the max over processes, not a sum
    assert samples[names.CIRCUIT_OPEN] == 0
    # The sidecar's own metrics appear once, and it wrote nothing into the agents' directory.
    _, body, _ = sc.get("/metrics")
    assert body.decode().count(f"\n{names.TTL_EXPIRIES} ") == 1
    assert sc.process is not None
    assert not [p for p in os.listdir(mp_dir) if str(sc.process.pid) in p]


def test_prometheus_multiproc_dir_in_the_sidecar_env_is_the_default_directory(
    private_server: EmbeddedServer, sidecar_factory: Factory, tmp_path: Path
) -> None:
    mp_dir = tmp_path / "from-env"
    mp_dir.mkdir()
    env = clean_env(PROMETHEUS_MULTIPROC_DIR=str(mp_dir))
    sc = sidecar_factory(*serve_args(private_server.url, "mp"), env=env).wait_serving()
    run_agents(private_server.url, mp_dir, tmp_path, (2,))
    assert sc.metric(f'{names.RUNS_STARTED}{{mode="fresh"}}') == 2
    assert sc.metric(names.TTL_EXPIRIES) == 0
    assert sc.process is not None
    assert not [p for p in os.listdir(mp_dir) if str(sc.process.pid) in p]
