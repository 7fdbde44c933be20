"""Several agent processes, one multiprocess directory, one /metrics for the pod."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from sidecar import names
from sidecar.server.embedded import EmbeddedServer, free_port
from sidecar.server.reaper import DeadAgentReaper

from .helpers import SidecarProcess, clean_env, serve_args, start_agent, wait_until

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


def save_counts(samples: dict[str, float]) -> dict[str, float]:
    return {
        k: v
        for k, v in samples.items()
        if k.startswith(f"{names.OPERATION_DURATION}_count") and 'operation="save_section"' in k
    }


def test_an_agent_killed_with_its_circuit_open_leaves_no_stale_gauge(
    private_server: EmbeddedServer, sidecar_factory: Factory, tmp_path: Path
) -> None:
    """SIGKILL an agent process whose circuit is open: the sidecar finds it gone and drops its
    live gauges (prometheus_client's mark_process_dead), so checkpoint_circuit_open is 0 in
    the merged output and the critical alert stops; its counters stay (never backwards)."""
    mp_dir = tmp_path / "multiproc"
    mp_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}
    sc = sidecar_factory(
        *serve_args(private_server.url, "mp", "--multiproc-dir", str(mp_dir))
    ).wait_serving()
    # The pod's other agent process (e.g. the one restarted in its place) lives on.
    alive = start_agent(private_server.url, "mp", "hold", 1, tmp_path, **env)
    dead_url = f"redis://127.0.0.1:{free_port()}/0"
    opener = start_agent(dead_url, "mp", "open", 3, tmp_path, **env)
    try:
        wait_until(lambda: sc.metric(names.CIRCUIT_OPEN) == 1, "the agent's circuit to open")
        wait_until(
            lambda: any('outcome="ok"' in k for k in save_counts(sc.samples())),
            "the live agent's save",
        )
        before = save_counts(sc.samples())
        assert sum(before.values()) >= 4  # 3 refused by the dead URL + 1 of the live agent
        opener.send_signal(signal.SIGKILL)
        opener.wait(10)
        wait_until(lambda: sc.metric(names.CIRCUIT_OPEN) in (0, None), "the stale gauge to go")
        samples = sc.samples()
        assert samples.get(names.CIRCUIT_OPEN, 0) == 0
        assert save_counts(samples) == before  # the dead agent's counters are kept
        assert samples[names.AGENTS_REAPED] == 1
        assert alive.poll() is None
        assert samples[names.BUDGET_SECONDS] == 2.0  # the live agent's gauge is kept
    finally:
        for agent in (opener, alive):
            if agent.poll() is None:
                agent.kill()
            agent.wait(10)


def test_the_reaper_drops_nothing_while_it_sees_no_agent_alive(tmp_path: Path) -> None:
    """Without a shared pid namespace every agent pid looks gone: nothing may be dropped then.
    One agent seen alive proves the namespace is shared; then the gone ones are dropped."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(10)
    (tmp_path / f"counter_{gone.pid}.db").write_bytes(b"")
    (tmp_path / f"gauge_livemax_{gone.pid}.db").write_bytes(b"")
    (tmp_path / "gauge_livemax_1.db").write_bytes(b"")  # pid 1 proves nothing
    reaper = DeadAgentReaper(tmp_path)
    assert reaper.sweep() == []
    assert (tmp_path / f"gauge_livemax_{gone.pid}.db").exists()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f"counter_{alive.pid}.db").write_bytes(b"")
        (tmp_path / f"gauge_livemax_{alive.pid}.db").write_bytes(b"")
        assert reaper.sweep() == [gone.pid]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [f"counter_{gone.pid}.db", f"counter_{alive.pid}.db",
             f"gauge_livemax_{alive.pid}.db", "gauge_livemax_1.db"]
        )  # fmt: skip
        assert reaper.sweep() == []  # once
    finally:
        alive.kill()
        alive.wait(10)
