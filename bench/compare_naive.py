"""The library against the seed's naive design, on the same private server in the same run.

    python bench/compare_naive.py [--quick] [--json PATH]

1. Latency of save_section, has_checkpoints, load_all_sections (4 × 2 KB) and cleanup, with
   0, 100k and 1M unrelated keys in the server (``DEBUG POPULATE``). The naive design finds a
   run's keys with ``KEYS pattern``, which walks the whole keyspace.
   The designs alternate in blocks of runs, one after the other, never at the same time.
2. The tail latency another client sees (a separate process sending GET every 1 ms) while
   each design serves its calls: ``KEYS`` blocks the single-threaded server for everyone.
3. Lost progress entries: 8 concurrent savers (8 workers, 8 manager objects) on one run, each
   saving a different section; afterwards the progress must list all 8. The naive
   GET-then-SETEX loses entries; the library's Lua save cannot. A library loss exits 1.

The library runs with a 1000 ms budget here so that it never gives up (the designs run one
after the other, never at the same time); its timeouts are counted and printed anyway.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis
from _common import (
    SECTIONS,
    bench_server,
    console,
    fmt_ms,
    fmt_ratio,
    machine,
    parser,
    section_content,
    server_version,
    stats_ms,
    table,
    write_json,
)
from naive import NaiveCheckpointManager
from prometheus_client import CollectorRegistry

from sidecar import CheckpointConfig, Checkpointer, RunContext, names

OPS = ("save_section", "has_checkpoints", "load_all_sections", "cleanup")
SAVERS = 8
PACE_S = 0.010  # offered load while another client watches: one run every 10 ms
CHUNKS = 10  # the designs alternate in this many blocks of runs
BIG = 1_000_000  # from this keyspace size on, the naive design gets fewer runs (KEYS is slow)


class Manager(Protocol):
    async def save_section(self, section: str, content: Any) -> bool: ...
    async def has_checkpoints(self) -> bool: ...
    async def load_all_sections(self) -> dict[str, Any]: ...
    async def cleanup(self) -> bool: ...


Factory = Callable[[str, str], Manager]


# --- 1. latency per verb ------------------------------------------------------------------


async def timed(samples: list[float], call: Awaitable[Any]) -> Any:
    start = time.perf_counter()
    result = await call
    samples.append(time.perf_counter() - start)
    return result


async def one_run(make: Factory, run_id: str, samples: dict[str, list[float]]) -> None:
    """The seed's life of a run: four saves, the resume check, load all, cleanup."""
    mgr = make("bench-user", run_id)
    for name in SECTIONS:
        assert await timed(samples["save_section"], mgr.save_section(name, CONTENT[name]))
    assert await timed(samples["has_checkpoints"], mgr.has_checkpoints())
    loaded = await timed(samples["load_all_sections"], mgr.load_all_sections())
    assert len(loaded) == len(SECTIONS), loaded.keys()
    assert await timed(samples["cleanup"], mgr.cleanup())


async def latencies(
    designs: dict[str, Factory], runs: dict[str, int], tag: str
) -> dict[str, dict[str, list[float]]]:
    """The designs take turns in ``CHUNKS`` blocks of runs, so drift in the machine hits both
    alike, while the server's catch-up after a long naive ``KEYS`` (its deferred cron work)
    touches at most the first call of a library block instead of every other call."""
    samples = {design: {op: [] for op in OPS} for design in designs}
    for design, make in designs.items():  # warm-up: connections, scripts
        for i in range(3):
            await one_run(make, f"warm-{design}-{tag}-{i}", {op: [] for op in OPS})
    for chunk in range(CHUNKS):
        for design, make in designs.items():
            per_chunk = max(1, runs[design] // CHUNKS)
            for i in range(per_chunk):
                await one_run(make, f"{design}-{tag}-{chunk}-{i}", samples[design])
            await asyncio.sleep(0.05)
    return samples


# --- 2. what another client sees ------------------------------------------------------------


def observe(url: str, seconds: float) -> list[tuple[float, float]]:
    """In its own process: GET every 1 ms; returns (wall time, latency s) per GET."""
    client = redis.Redis.from_url(url)
    client.set("observer:probe", "x")
    samples = []
    end = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < end:
        start = time.perf_counter()
        client.get("observer:probe")
        samples.append((time.time(), time.perf_counter() - start))
        next_at += 0.001
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_at = time.monotonic()
    client.close()
    return samples


async def tail_seen(
    pool: concurrent.futures.Executor, url: str, make: Factory | None, seconds: float, tag: str
) -> dict[str, float]:
    """Observer latencies while ``make``'s design serves runs (None: an idle server).

    Both designs get the same offered load, one run (seven calls) every ``PACE_S``, so the
    client-side CPU they use is alike; a design slower than that pace runs back to back.
    """
    loop = asyncio.get_running_loop()
    slack = 0.3  # the observer (already spawned, redis imported) connects meanwhile
    future = loop.run_in_executor(pool, observe, url, seconds + 2 * slack)
    await asyncio.sleep(slack)
    window_start = time.time()
    calls = 0
    while time.time() - window_start < seconds:
        started = time.monotonic()
        if make is not None:
            await one_run(make, f"tail-{tag}-{calls}", {op: [] for op in OPS})
            calls += 1
        await asyncio.sleep(max(0.0, PACE_S - (time.monotonic() - started)))
    window_end = time.time()
    samples = [lat for at, lat in await future if window_start <= at <= window_end]
    figures = stats_ms(samples)
    figures["runs"] = calls
    figures["over_10ms"] = sum(1 for s in samples if s > 0.010)
    return figures


# --- 3. lost progress entries ---------------------------------------------------------------


async def lost_entries(
    make: Factory, progress_of: Callable[[Any], Any], runs: int
) -> dict[str, int]:
    """``SAVERS`` workers save one distinct section each, concurrently; count lost entries."""
    lost_total = runs_with_loss = 0
    for r in range(runs):
        workers = [make("bench-racer", f"race-{r}") for _ in range(SAVERS)]
        await asyncio.gather(
            *(w.save_section(f"part-{i}", CONTENT["summary"]) for i, w in enumerate(workers))
        )
        completed = await progress_of(workers[0])
        lost = SAVERS - len(set(completed))
        lost_total += lost
        runs_with_loss += lost > 0
        await workers[0].cleanup()
    return {"runs": runs, "runs_with_loss": runs_with_loss, "lost_entries": lost_total}


async def naive_progress(mgr: NaiveCheckpointManager) -> list[str]:
    progress = await mgr.get_progress()
    completed: list[str] = progress.get("completed_sections", [])
    return completed


async def library_progress(mgr: Any) -> list[str]:
    progress = await mgr.get_progress()
    completed: list[str] = progress.completed_sections
    return completed


# --- the whole comparison -------------------------------------------------------------------

CONTENT = {name: section_content(name) for name in SECTIONS}


async def compare(
    url: str, sizes: list[int], runs: int, lost_runs: int, observe_s: float
) -> dict[str, Any]:
    admin = aioredis.Redis.from_url(url)
    # the same transport settings as the library's client (no socket timeout: redis-py would
    # otherwise send through asyncio.wait_for, ~a task per send), so only the designs differ
    naive_client = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=None)
    registry = CollectorRegistry()
    config = (
        CheckpointConfig(  # the same bytes as the naive client: compression in bench/storage.py
            key_prefix="ckpt", budget_ms=1000, ttl_seconds=3600, compression="none"
        )
    )
    cp = Checkpointer.from_url(url, config=config, registry=registry)
    designs: dict[str, Factory] = {
        "naive": lambda user, run: NaiveCheckpointManager(naive_client, user, run),
        "library": lambda user, run: cp.manager(RunContext(user_id=user, run_id=run)),
    }
    figures: dict[str, Any] = {"server": server_version(await admin.info("server"))}
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        await asyncio.get_running_loop().run_in_executor(pool, observe, url, 0.01)  # spawn it
        for size in sizes:
            await admin.flushall()  # our private server only
            if size:
                await admin.execute_command("DEBUG", "POPULATE", size, "filler", 64)
            keys = await admin.dbsize()
            console.print(f"[dim]{keys:,} unrelated keys in the server[/]")
            at_size: dict[str, Any] = {"keys": keys}
            counts = {d: runs // 3 if d == "naive" and size >= BIG else runs for d in designs}
            samples = await latencies(designs, counts, str(size))
            for design in designs:
                at_size[design] = {op: stats_ms(samples[design][op]) for op in OPS}
                at_size[design]["runs"] = counts[design]
            at_size["tail"] = {"idle": await tail_seen(pool, url, None, observe_s, "idle")}
            for design, make in designs.items():
                at_size["tail"][design] = await tail_seen(
                    pool, url, make, observe_s, f"{design}-{size}"
                )
            figures[str(size)] = at_size
    await admin.flushall()
    figures["lost"] = {
        "naive": await lost_entries(designs["naive"], naive_progress, lost_runs),
        "library": await lost_entries(designs["library"], library_progress, lost_runs),
    }
    figures["library_non_ok"] = {
        outcome: sum(
            registry.get_sample_value(
                names.OPERATION_DURATION + "_count", {"operation": op, "outcome": outcome}
            ) or 0.0
            for op in names.ALL_OPERATIONS
        )
        for outcome in (names.TIMEOUT, names.ERROR, names.SKIPPED)
    }  # fmt: skip
    await cp.aclose()
    await naive_client.aclose()
    await admin.aclose()
    return figures


def report(figures: dict[str, Any], sizes: list[int]) -> None:
    rows = []
    for size in sizes:
        at = figures[str(size)]
        for op in OPS:
            n, lib = at["naive"][op], at["library"][op]
            rows.append(
                (
                    f"{op} @ {size:,} keys",
                    fmt_ms(n["p50_ms"]), fmt_ms(lib["p50_ms"]), fmt_ratio(n["p50_ms"] / lib["p50_ms"]),
                    fmt_ms(n["p99_ms"]), fmt_ms(lib["p99_ms"]), fmt_ratio(n["p99_ms"] / lib["p99_ms"]),
                )
            )  # fmt: skip
    console.print(
        table(
            f"Naive (seed) vs library, {figures['server']}: {figures['runs']} runs of 4 saves + "
            f"1 each per size (naive: {figures['runs'] // 3} at ≥ {BIG:,} keys); "
            "faster = naive / library",
            ("operation", "naive p50", "library p50", "faster p50",
             "naive p99", "library p99", "faster p99"),
            rows,
        )
    )  # fmt: skip
    tail_rows = []
    for size in sizes:
        tail = figures[str(size)]["tail"]
        tail_rows.append(
            (
                f"{size:,} keys",
                fmt_ms(tail["idle"]["p99_ms"]),
                fmt_ms(tail["naive"]["p50_ms"]), fmt_ms(tail["naive"]["p99_ms"]),
                fmt_ms(tail["naive"]["max_ms"]),
                fmt_ms(tail["library"]["p50_ms"]), fmt_ms(tail["library"]["p99_ms"]),
                fmt_ms(tail["library"]["max_ms"]),
            )
        )  # fmt: skip
    console.print(
        table(
            "Another client's GET (every 1 ms, own process) while each design serves one run "
            f"(7 calls) every {PACE_S * 1000:g} ms",
            ("keyspace", "idle p99", "naive p50", "naive p99", "naive max",
             "library p50", "library p99", "library max"),
            tail_rows,
        )
    )  # fmt: skip
    lost = figures["lost"]
    console.print(
        table(
            f"Lost progress entries: {SAVERS} concurrent savers on one run",
            ("design", "runs", "runs with a loss", "entries lost", f"of {SAVERS} per run"),
            [
                (d, str(lost[d]["runs"]), str(lost[d]["runs_with_loss"]),
                 str(lost[d]["lost_entries"]),
                 f"{lost[d]['lost_entries'] / lost[d]['runs']:.2f} lost")
                for d in ("naive", "library")
            ],
        )
    )  # fmt: skip
    non_ok = figures["library_non_ok"]
    console.print(
        f"library calls not ok (1000 ms budget): {non_ok[names.TIMEOUT]:.0f} timeouts, "
        f"{non_ok[names.ERROR]:.0f} errors, {non_ok[names.SKIPPED]:.0f} skipped"
    )


def main() -> int:
    p = parser(__doc__.split("\n\n")[0])
    args = p.parse_args()
    sizes = [0, 100_000] if args.quick else [0, 100_000, 1_000_000]
    runs = 100 if args.quick else 300
    lost_runs = 50 if args.quick else 500
    observe_s = 1.0 if args.quick else 3.0
    with bench_server(debug=True, binary=args.server) as server:
        figures = asyncio.run(compare(server.url, sizes, runs, lost_runs, observe_s))
    figures["runs"] = runs
    figures["machine"] = machine()
    figures["sizes"] = sizes
    report(figures, sizes)
    write_json(args.json, figures)
    if figures["lost"]["library"]["lost_entries"]:
        console.print("[red]the library lost progress entries: that is a bug[/]")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
