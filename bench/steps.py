"""Steps per second of a resumable run: what producing a section costs in checkpoint calls.

    python bench/steps.py [--quick] [--runs N] [--json PATH]

A run of four planned sections whose ``produce`` is instant, so only checkpointing is timed:
``async with cp.run(ctx, plan) as run: for name in plan: await run.step(name, produce)``.
Two ways, alternating in the same process on the same private server, SDK tracing on:

* **in plan order** — the acquire marks the first section in progress and each save marks the
  next one: one EVALSHA per step (issue 9, item 6);
* **without a plan** — the next section is unknown, so each step sends ``mark_in_progress``
  before producing and the save after: two round trips per step, the cost every step had
  before the marker was folded into the save.

Each figure is steps/s counting the acquire and the cleanup of each run (a whole run's cost
divided by its steps), sequentially (one run at a time) and with 32 runs in flight.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from _common import bench_server, console, machine, parser, server_version, table, write_json
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from overhead import DropExporter
from prometheus_client import CollectorRegistry

from sidecar import CheckpointConfig, Checkpointer, RunContext

PLAN = ("summary", "data_analysis", "recommendations", "action_items")


async def one_run(cp: Checkpointer, i: int, planned: bool) -> None:
    ctx = RunContext(user_id="bench", run_id=f"{'p' if planned else 'n'}-{i}")
    async with cp.run(ctx, plan=PLAN if planned else None) as run:
        for name in PLAN:
            await run.step(name, lambda name=name: {"section": name, "body": "x" * 512})


async def steps_per_s(cp: Checkpointer, runs: int, planned: bool, concurrency: int) -> float:
    queue = iter(range(runs))

    async def worker() -> None:
        for i in queue:
            await one_run(cp, i, planned)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return runs * len(PLAN) / (time.perf_counter() - started)


async def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    runs = 50 if args.quick else 1000
    rounds = 2 if args.quick else 5
    exporter = DropExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=65536))
    cfg = CheckpointConfig(budget_ms=1000)
    figures: dict[str, Any] = {"machine": machine(), "runs": runs, "rounds": rounds}
    with bench_server(binary=args.server) as server:
        async with Checkpointer.from_url(
            server.url, config=cfg, registry=CollectorRegistry(), tracer_provider=provider
        ) as cp:
            await cp.connect()
            info = await cp.store.client.info("server")
            figures["server"] = server_version(info)
            await one_run(cp, -1, True)  # warm: scripts loaded, connections open
            await one_run(cp, -1, False)
            results: dict[str, list[float]] = {}
            for concurrency in (1, 32):
                for _ in range(rounds):  # alternate, so drift hits both alike
                    for planned in (False, True):
                        key = f"{'plan' if planned else 'no_plan'}_c{concurrency}"
                        value = await steps_per_s(cp, runs, planned, concurrency)
                        results.setdefault(key, []).append(value)
    provider.shutdown()
    rows = []
    for concurrency in (1, 32):
        before = sorted(results[f"no_plan_c{concurrency}"])[rounds // 2]
        after = sorted(results[f"plan_c{concurrency}"])[rounds // 2]
        figures[f"concurrency_{concurrency}"] = {
            "two_round_trips_steps_per_s": before,
            "one_round_trip_steps_per_s": after,
            "ratio": after / before,
        }
        rows.append((str(concurrency), f"{before:,.0f}", f"{after:,.0f}", f"{after / before:.2f}×"))
    console.print(
        table(
            f"Steps/s, 4-section runs, SDK tracing on ({figures['server']}, median of {rounds})",
            ["runs in flight", "mark + save (2 round trips)", "in plan order (1)", "gain"],
            rows,
        )
    )
    figures["spans_exported"] = exporter.spans
    write_json(args.json, figures)


if __name__ == "__main__":
    asyncio.run(main())
