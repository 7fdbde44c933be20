"""Benchmark of the sidecar process: expiry-watcher throughput and /metrics scrape time.

    python bench/expiry_watcher.py [--runs 20000] [--published 100000] [--agents 8]
                                   [--baseline-root /path/to/other/checkout]

Everything runs as real processes on loopback: a private valkey-server, the sidecar
(``python -m sidecar serve``) and, for the scrape figure, agent processes writing their
metrics into one multiprocess directory.

1. **Expiry burst**: N runs (a ``sections`` and a ``meta`` key each, as the library writes
   them) set with PEXPIREAT to the same instant. Reported: time from that instant until
   ``checkpoint_ttl_expiries_total`` (summed over the sidecars) reaches N, the rate, and how
   many were missed or counted twice (an ordered marker expiry closes the count, so both are
   exact, not a timeout guess). This includes the server's own expiry work (active expiry
   cycle, ``hz``). Measured with one sidecar, then with two counting sidecars racing for the
   claims (the shipped two-replica deployment), and, with ``--baseline-root``, with one sidecar
   of another checkout (e.g. the code before the claims) in the same run.
2. **Watcher capacity**: synthetic ``expired`` events PUBLISHed on the key-event channel as
   fast as a pipeline can send them; isolates the watcher's own message handling.
3. **Scrape**: /metrics latency with no agents (baseline) and with K agent processes in
   multiprocess mode, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from sidecar import names  # noqa: E402
from sidecar.keys import run_keys  # noqa: E402
from sidecar.server.embedded import EmbeddedServer  # noqa: E402
from tests.server.helpers import clean_env as _env  # noqa: E402

PREFIX = "bench"
POLL = 0.02


class SidecarProc:
    def __init__(self, url: str, workdir: Path, *extra: str, root: Path = ROOT) -> None:
        self.out = workdir / f"sidecar-{time.monotonic_ns()}.out"
        env = _env(PYTHONPATH=str(root))
        with self.out.open("wb") as out, (workdir / "sidecar.err").open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "serve", "--redis-url", url,
                 "--key-prefix", PREFIX, "--port", "0", "--log-level", "warning", *extra],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=root,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        self.metrics_url = ""
        while not self.metrics_url:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"sidecar did not start; see {workdir}")
            for line in self.out.read_text().splitlines():
                if line.startswith("serving http://"):
                    self.metrics_url = line.split()[1]
            time.sleep(0.05)

    def watching(self) -> bool:
        """Counting (this code), or subscribed (code without counting slots)."""
        values = {
            sample.name: sample.value
            for family in text_string_to_metric_families(self.scrape().decode())
            for sample in family.samples
        }
        return values.get(names.WATCHER_COUNTING, values.get(names.WATCHER_UP)) == 1

    def scrape(self) -> bytes:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            body: bytes = response.read()
            return body

    def expiries(self) -> float:
        for family in text_string_to_metric_families(self.scrape().decode()):
            for sample in family.samples:
                if sample.name == names.TTL_EXPIRIES:
                    return sample.value
        raise RuntimeError(f"{names.TTL_EXPIRIES} not on /metrics")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Fleet(list[SidecarProc]):
    """Sidecars of one Redis; ``expiries()`` sums them as the shipped rules do."""

    def expiries(self) -> float:
        return sum(sc.expiries() for sc in self)

    def wait_watching(self, counting: int) -> None:
        deadline = time.monotonic() + 30
        while sum(sc.watching() for sc in self) < counting:
            if time.monotonic() > deadline:
                raise SystemExit("the sidecars did not start counting")
            time.sleep(0.05)

    def stop(self) -> None:
        for sc in self:
            sc.stop()


def wait_count(sc: Fleet, target: float, quiet_for: float) -> tuple[float, float]:
    """Poll until the counter reaches ``target`` or stops moving for ``quiet_for`` seconds."""
    last, last_change = sc.expiries(), time.monotonic()
    while last < target:
        time.sleep(POLL)
        value = sc.expiries()
        if value != last:
            last, last_change = value, time.monotonic()
        elif time.monotonic() - last_change > quiet_for:
            break
    return last, time.monotonic()


def close_count(sc: Fleet, client: redis.Redis, before: float) -> float:
    """Expire one ordered marker; once it is counted, every earlier event has been too."""
    for key in client.scan_iter(match=f"{PREFIX}:*", count=5000):
        client.exists(key)  # anything not yet expired expires now
    client.set(run_keys(PREFIX, "marker", str(time.monotonic_ns())).meta, b"x", px=1)
    wait_count(sc, before + 1, quiet_for=10)
    time.sleep(0.5)  # a second counting sidecar's late duplicate would show up now
    return sc.expiries() - 1


def expiry_burst(sc: Fleet, client: redis.Redis, runs: int) -> dict[str, float]:
    start_count = sc.expiries()
    pipe = client.pipeline(transaction=False)
    for i in range(runs):
        keys = run_keys(PREFIX, f"user{i % 97}", f"run{i}")
        pipe.hset(keys.sections, "intro", b'"hello"')
        pipe.hset(keys.meta, mapping={"order": "intro", "updated": "0"})
    pipe.execute()
    sec, usec = client.time()
    expire_at_ms = sec * 1000 + usec // 1000 + 3000
    pipe = client.pipeline(transaction=False)
    for i in range(runs):
        keys = run_keys(PREFIX, f"user{i % 97}", f"run{i}")
        pipe.pexpireat(keys.sections, expire_at_ms)
        pipe.pexpireat(keys.meta, expire_at_ms)
    pipe.execute()
    sec, usec = client.time()
    lead = (expire_at_ms - (sec * 1000 + usec // 1000)) / 1000
    if lead <= 0:
        raise SystemExit("writing the runs took longer than the lead time; use fewer --runs")
    expire_at = time.monotonic() + lead  # the server's instant on our clock
    value, reached = wait_count(sc, start_count + runs, quiet_for=5)
    counted = close_count(sc, client, value) - start_count
    elapsed = reached - expire_at
    return {
        "sidecars": len(sc),
        "runs": runs,
        "seconds_to_count_all": round(elapsed, 3),
        "expiries_per_s": round(min(counted, runs) / elapsed) if elapsed > 0 else 0.0,
        "missed": max(0, int(runs - counted)),
        "counted_twice": max(0, int(counted - runs)),
    }


def watcher_capacity(sc: Fleet, client: redis.Redis, events: int) -> dict[str, float]:
    start_count = sc.expiries()
    channel = "__keyevent@0__:expired"
    payloads = [run_keys(PREFIX, "pub", f"r{i}").meta.encode() for i in range(events)]
    started = time.monotonic()
    for offset in range(0, events, 10_000):
        pipe = client.pipeline(transaction=False)
        for key in payloads[offset : offset + 10_000]:
            pipe.publish(channel, key)
        pipe.execute()
    sent = time.monotonic() - started
    value, reached = wait_count(sc, start_count + events, quiet_for=5)
    elapsed = reached - started
    return {
        "events": events,
        "publish_seconds": round(sent, 3),
        "seconds_to_count_all": round(elapsed, 3),
        "events_per_s": round((value - start_count) / elapsed),
        "missed": int(events - (value - start_count)),
    }


def start_fleet(url: str, workdir: Path, n: int, root: Path = ROOT) -> Fleet:
    fleet = Fleet(SidecarProc(url, workdir, root=root) for _ in range(n))
    fleet.wait_watching(n)
    return fleet


def scrape_times(sc: SidecarProc, scrapes: int) -> dict[str, float]:
    times = []
    size = 0
    for _ in range(scrapes):
        started = time.perf_counter()
        size = len(sc.scrape())
        times.append(time.perf_counter() - started)
    times.sort()
    return {
        "median_ms": round(statistics.median(times) * 1000, 2),
        "p95_ms": round(times[int(len(times) * 0.95) - 1] * 1000, 2),
        "bytes": size,
    }


def agent_main(url: str, runs: int) -> None:
    """One agent process: completed and failed runs, loads, progress: every metric moves."""
    import asyncio

    from sidecar import CheckpointConfig, Checkpointer, RunContext

    async def work() -> None:
        config = CheckpointConfig(redis_url=url, key_prefix="agents", budget_ms=100)
        async with Checkpointer.from_url(url, config=config) as cp:
            for i in range(runs):
                ctx = RunContext(user_id=f"u{os.getpid()}", run_id=f"r{i}")
                manager = cp.manager(ctx)
                await manager.save_section("draft", {"i": i})
                await manager.load_section("draft")
                await manager.get_progress()
                async with cp.run(ctx, plan=["intro", "body"]) as run:
                    await run.step("intro", lambda: "hello")
                    await run.step("body", lambda: "world")

    asyncio.run(work())


def scrape_with_agents(
    server: EmbeddedServer, workdir: Path, agents: int, scrapes: int
) -> dict[str, dict[str, float]]:
    mp_dir = workdir / "multiproc"
    mp_dir.mkdir()
    base = SidecarProc(server.url, workdir)
    try:
        baseline = scrape_times(base, scrapes)
    finally:
        base.stop()
    with (workdir / "agents.err").open("ab") as agents_err:
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--agent", server.url, "--agent-runs", "50"],
                env=_env(PROMETHEUS_MULTIPROC_DIR=str(mp_dir)),
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=agents_err,
            )
            for _ in range(agents)
        ]
    for proc in procs:
        if proc.wait(120) != 0:
            raise SystemExit(f"an agent failed; see {workdir / 'agents.err'}")
    sc = SidecarProc(server.url, workdir, "--multiproc-dir", str(mp_dir))
    try:
        with_agents = scrape_times(sc, scrapes)
    finally:
        sc.stop()
    with_agents["files"] = len(os.listdir(mp_dir))
    return {"baseline": baseline, f"{agents}_agents": with_agents}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20_000, help="runs expiring together")
    parser.add_argument("--published", type=int, default=100_000, help="synthetic events")
    parser.add_argument("--agents", type=int, default=8, help="agent processes (multiproc)")
    parser.add_argument("--scrapes", type=int, default=50, help="scrapes timed per setup")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--baseline-root", type=Path, help="also measure the burst with this checkout's sidecar"
    )
    parser.add_argument("--agent", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--agent-runs", type=int, default=50, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent:
        agent_main(args.agent, args.agent_runs)
        return
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sidecar-") as tmp, EmbeddedServer() as server:
        workdir = Path(tmp)
        client = redis.Redis.from_url(server.url)
        try:
            if args.baseline_root:
                fleet = start_fleet(server.url, workdir, 1, root=args.baseline_root)
                try:
                    results["expiry_burst_baseline"] = expiry_burst(fleet, client, args.runs)
                finally:
                    fleet.stop()
                print("expiry burst, baseline ", results["expiry_burst_baseline"], flush=True)
            client.flushall()  # no leftover keys (claims) expiring into the next phase
            fleet = start_fleet(server.url, workdir, 1)
            try:
                results["expiry_burst"] = expiry_burst(fleet, client, args.runs)
                print("expiry burst, 1 sidecar", results["expiry_burst"], flush=True)
                results["watcher_capacity"] = watcher_capacity(fleet, client, args.published)
                print("watcher capacity       ", results["watcher_capacity"], flush=True)
            finally:
                fleet.stop()
            client.flushall()  # the capacity phase's 100,000 claims would expire meanwhile
            fleet = start_fleet(server.url, workdir, 2)
            try:
                results["expiry_burst_2"] = expiry_burst(fleet, client, args.runs)
                print("expiry burst, 2 counting", results["expiry_burst_2"], flush=True)
            finally:
                fleet.stop()
        finally:
            client.close()
        results["scrape"] = scrape_with_agents(server, workdir, args.agents, args.scrapes)
        for name, figures in results["scrape"].items():  # type: ignore[attr-defined]
            print(f"scrape {name:<10}", figures, flush=True)
    target = 5000
    bursts = [results["expiry_burst"], results["expiry_burst_2"]]
    ok = all(
        isinstance(b, dict) and b["expiries_per_s"] >= target and b["missed"] == 0
        and b["counted_twice"] == 0 for b in bursts
    )  # fmt: skip
    verdict = "meets" if ok else "MISSES"
    print(f"target >= {target} expiries/s with none missed nor counted twice: {verdict}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
