"""Throughput from one agent process, Redis memory per run, and the sidecar's RSS.

    python bench/throughput.py [--quick] [--seconds S] [--json PATH]

1. saves/s and loads/s (load_all_sections of 4 × 2 KB) from one asyncio process with 64
   concurrent runs, with the OpenTelemetry SDK (BatchSpanProcessor) and with a no-op tracer.
2. Redis memory of one run holding 4 × 2 KB sections: ``MEMORY USAGE`` of its keys (lease
   included, as while the run is open), and ``used_memory`` growth over 1000 such runs,
   next to the seed's naive layout (4 string keys + a progress key).
3. RSS of the sidecar process (``python -m sidecar serve``) watching that server, after it has
   served /metrics and counted a burst of expiries.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from _common import (
    ROOT,
    SECTIONS,
    bench_server,
    console,
    machine,
    parser,
    section_content,
    server_version,
    table,
    write_json,
)
from naive import NaiveCheckpointManager
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NoOpTracerProvider
from prometheus_client import CollectorRegistry

from sidecar import CheckpointConfig, Checkpointer, RunContext
from sidecar.server.embedded import free_port

CONCURRENT_RUNS = 64
CONTENT = {name: section_content(name) for name in SECTIONS}


class DropExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


# --- 1. throughput --------------------------------------------------------------------------


async def rate(cp: Checkpointer, verb: str, seconds: float, tag: str) -> float:
    """Calls per second of ``verb`` from CONCURRENT_RUNS tasks, each on its own run."""
    managers = [
        cp.manager(RunContext(user_id="tp-user", run_id=f"{tag}-{i}"))
        for i in range(CONCURRENT_RUNS)
    ]
    for mgr in managers:  # every run holds its 4 sections (loads read them)
        for name in SECTIONS:
            await mgr.save_section(name, CONTENT[name])
    counts = [0] * len(managers)
    end = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        # Only confirmed calls count. A call over the budget (a loaded machine) is not a bench
        # failure: it is counted in the metrics and printed as "not ok" below.
        mgr = managers[i]
        k = 0
        while time.perf_counter() < end:
            if verb == "save":
                ok = await mgr.save_section(SECTIONS[k % 4], CONTENT[SECTIONS[k % 4]])
            else:
                loaded = await mgr.load_all_sections()
                assert len(loaded) in (0, 4), "a load returned some sections but not all"
                ok = bool(loaded)
            k += 1
            counts[i] += ok

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(len(managers))))
    elapsed = time.perf_counter() - start
    for mgr in managers:
        await mgr.cleanup()
    return sum(counts) / elapsed


async def throughput(url: str, seconds: float) -> dict[str, dict[str, float]]:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DropExporter(), max_queue_size=1 << 17))
    setups: dict[str, Any] = {"OTel SDK": provider, "no-op tracer": NoOpTracerProvider()}
    config = CheckpointConfig(key_prefix="ckpt-tp", budget_ms=100, compression="none")
    figures: dict[str, dict[str, float]] = {}
    for label, tracer_provider in setups.items():
        cp = Checkpointer.from_url(
            url, config=config, registry=CollectorRegistry(), tracer_provider=tracer_provider
        )
        await cp.connect(connections=CONCURRENT_RUNS)  # as an application would at start-up
        await rate(cp, "save", 0.3, f"warm-{label}")
        figures[label] = {
            "saves_per_s": await rate(cp, "save", seconds, f"save-{label}"),
            "loads_per_s": await rate(cp, "load", seconds, f"load-{label}"),
            "timeouts": sum(
                s.value
                for m in cp.telemetry.metrics.duration.collect()
                for s in m.samples
                if s.name.endswith("_count") and s.labels.get("outcome") != "ok"
            ),
        }
        await cp.aclose()
    provider.shutdown()
    return figures


# --- 2. memory per run ----------------------------------------------------------------------


async def memory_per_run(url: str, runs: int) -> dict[str, float]:
    admin = aioredis.Redis.from_url(url)
    await admin.flushall()  # our private server only
    # plain JSON, as the naive client stores it (compressed figures: bench/storage.py)
    plain = CheckpointConfig(key_prefix="ckpt", budget_ms=1000, compression="none")
    cp = Checkpointer.from_url(url, config=plain)
    figures: dict[str, float] = {}
    ctx = RunContext(user_id="user-0001", run_id="run-000001")
    async with cp.run(ctx, plan=SECTIONS) as run:
        for name in SECTIONS:
            await run.step(name, lambda name=name: CONTENT[name])
        keys = cp.manager(ctx).keys
        usage = [await admin.memory_usage(k, samples=0) or 0 for k in keys.all]
        figures["library_memory_usage_bytes"] = sum(usage)
        figures["library_lease_bytes"] = usage[2]
    naive_client = aioredis.Redis.from_url(url, decode_responses=True)
    naive = NaiveCheckpointManager(naive_client, "user-0001", "run-000001")
    for name in SECTIONS:
        await naive.save_section(name, CONTENT[name])
    naive_keys = [naive._generate_key(n) for n in SECTIONS] + [naive._generate_progress_key()]
    figures["naive_memory_usage_bytes"] = sum(
        [await admin.memory_usage(k, samples=0) or 0 for k in naive_keys]
    )
    await admin.flushall()
    for label, save in (("library", "lib"), ("naive", "naive")):
        before = int((await admin.info("memory"))["used_memory"])
        for i in range(runs):
            user, run_id = f"user-{i % 100:04d}", f"run-{i:06d}"
            if save == "lib":
                mgr = cp.manager(RunContext(user_id=user, run_id=run_id))
                for name in SECTIONS:
                    await mgr.save_section(name, CONTENT[name])
            else:
                n = NaiveCheckpointManager(naive_client, user, run_id)
                for name in SECTIONS:
                    await n.save_section(name, CONTENT[name])
        after = int((await admin.info("memory"))["used_memory"])
        figures[f"{label}_used_memory_per_run_bytes"] = (after - before) / runs
        await admin.flushall()
    figures["payload_bytes"] = float(sum(len(json.dumps(CONTENT[n])) for n in SECTIONS))
    await cp.aclose()
    await naive_client.aclose()
    await admin.aclose()
    return figures


# --- 3. the sidecar's RSS -------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def sidecar_rss(url: str, expiring_runs: int) -> dict[str, float]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "PROMETHEUS_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    log = Path(tempfile.mkstemp(prefix="sidecar-rss-", suffix=".log")[1])
    command = [sys.executable, "-m", "sidecar", "serve", "--redis-url", url, "--port", str(port),
               "--key-prefix", "ckpt-rss", "--log-level", "warning"]  # fmt: skip
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the sidecar did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        started_kib = rss_kib(proc.pid)
        asyncio.run(_expire_burst(url, expiring_runs))
        deadline = time.monotonic() + 30
        seen = 0.0
        while seen < expiring_runs and time.monotonic() < deadline:
            with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
                text = response.read().decode()
            seen = _sample(text, "checkpoint_ttl_expiries_total")
            time.sleep(0.1)
        for _ in range(20):
            with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
                response.read()
        return {
            "rss_started_mib": started_kib / 1024,
            "rss_after_mib": rss_kib(proc.pid) / 1024,
            "expiries_counted": seen,
            "expiring_runs": expiring_runs,
        }
    finally:
        proc.terminate()
        proc.wait(10)
        log.unlink(missing_ok=True)


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def _expire_burst(url: str, runs: int) -> None:
    from sidecar.keys import run_keys

    client = aioredis.Redis.from_url(url)
    async with client.pipeline(transaction=False) as pipe:
        for i in range(runs):
            keys = run_keys("ckpt-rss", "u", f"r{i}")
            pipe.hset(keys.sections, "summary", "x")
            pipe.hset(keys.meta, "seq", 1)
            pipe.pexpire(keys.sections, 200)
            pipe.pexpire(keys.meta, 200)
        await pipe.execute()
    await client.aclose()


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, help="duration of each throughput phase")
    args = p.parse_args()
    seconds = args.seconds or (1.0 if args.quick else 5.0)
    runs = 200 if args.quick else 1000
    expiring = 1000 if args.quick else 10000
    with bench_server(binary=args.server) as server:
        tp = asyncio.run(throughput(server.url, seconds))
        memory = asyncio.run(memory_per_run(server.url, runs))
        rss = sidecar_rss(server.url, expiring)
        info = asyncio.run(_info(server.url))
    agent_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures = {
        "server": info,
        "concurrent_runs": CONCURRENT_RUNS,
        "seconds": seconds,
        "throughput": tp,
        "memory": memory,
        "sidecar": rss,
        "bench_process_max_rss_mib": agent_rss_mib,
        "machine": machine(),
    }
    console.print(
        table(
            f"Throughput, one process, {CONCURRENT_RUNS} concurrent runs, 2 KB sections ({info})",
            ("tracing", "saves/s", "loads/s (4 × 2 KB)", "calls not ok"),
            [
                (label, f"{f['saves_per_s']:,.0f}", f"{f['loads_per_s']:,.0f}",
                 f"{f['timeouts']:.0f}")
                for label, f in tp.items()
            ],
        )
    )  # fmt: skip
    m = memory
    console.print(
        table(
            f"Redis memory per run, 4 sections ({m['payload_bytes']:,.0f} B of JSON payload)",
            ("layout", "MEMORY USAGE of its keys", f"used_memory growth / run ({runs} runs)"),
            [
                ("library (sections + meta hashes, lease string)",
                 f"{m['library_memory_usage_bytes']:,.0f} B "
                 f"(lease {m['library_lease_bytes']:,.0f} B)",
                 f"{m['library_used_memory_per_run_bytes']:,.0f} B (no lease)"),
                ("naive (4 strings + progress)", f"{m['naive_memory_usage_bytes']:,.0f} B",
                 f"{m['naive_used_memory_per_run_bytes']:,.0f} B"),
            ],
        )
    )  # fmt: skip
    console.print(
        table(
            "Sidecar process (python -m sidecar serve)",
            ("state", "RSS"),
            [
                ("ready, watching", f"{rss['rss_started_mib']:.1f} MiB"),
                (f"after {rss['expiries_counted']:,.0f}/{expiring:,} expiries counted and "
                 "21 scrapes", f"{rss['rss_after_mib']:.1f} MiB"),
                ("this bench process (agent side, max)", f"{agent_rss_mib:.1f} MiB"),
            ],
        )
    )  # fmt: skip
    write_json(args.json, figures)


async def _info(url: str) -> str:
    client = aioredis.Redis.from_url(url)
    info = await client.info("server")
    await client.aclose()
    return server_version(info)


if __name__ == "__main__":
    main()
