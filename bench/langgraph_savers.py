"""LangGraph savers on one private Valkey, in one run: this project's SidecarSaver against the
module-free Redis savers a LangGraph user would pick instead, with InMemorySaver as the floor.

    python bench/langgraph_savers.py [--quick] [--json PATH] [--server BINARY]

Savers: ``SidecarSaver`` (OpenTelemetry SDK tracing on, BatchSpanProcessor; and again with a
no-op tracer, to show what the SDK span costs), ``InMemorySaver``,
``langgraph-checkpoint-plainredis`` (``AsyncRedisSaver``) and the Valkey saver of
``langgraph-checkpoint-aws`` (``AsyncValkeySaver``). The state has four channels; one changes
per step (``step``), three keep their first version (a 2 KB document, a plan, a list).

The savers run side by side, call by call, in an order shuffled every round (so drift in a
shared machine, and the aftermath of one saver's long call, hit all alike). For threads of 10, 100 and 1,000 checkpoints, each saver:
  * put and put_writes: timed over the second half of each thread's fill (enough threads of
    that length to give the same number of samples at every size);
  * get_tuple (latest) and list(limit=10): timed on a thread of exactly that length, in one
    read phase after every fill where the lengths and savers are interleaved call by call (so
    10 and 1,000 are compared under the same machine and server state);
  * Redis bytes per checkpoint: MEMORY USAGE summed over the keys the saver wrote, divided by
    the checkpoints, each saver alone on the server (SidecarSaver's keys come from
    ``saver.thread_keys``; the competitors' from SCAN of this private server);
then a real 4-node StateGraph's wall time per ``ainvoke`` on a fresh thread.
Timings are figures, never pass/fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypedDict

import redis.asyncio as aioredis
from _common import (
    bench_server,
    console,
    fmt_ms,
    machine,
    parser,
    server_version,
    stats_ms,
    table,
    write_json,
)
from langgraph.checkpoint.base import BaseCheckpointSaver, empty_checkpoint
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NoOpTracerProvider
from prometheus_client import CollectorRegistry

from sidecar import CheckpointConfig, Checkpointer
from sidecar.langgraph import SidecarSaver

SIZES = (10, 100, 1000)
OPS = ("put", "put_writes", "get_tuple", "list")
SIDECAR = "SidecarSaver"
SIDECAR_NOOP = "SidecarSaver, no-op tracer"
MEMORY = "InMemorySaver"
PLAIN = "plainredis"
AWS = "aws ValkeySaver"
DOC = "lorem ipsum dolor sit amet " * 76  # ~2 KB
PLAN = {"sections": ["summary", "data_analysis", "recommendations", "action_items"]}


class DropExporter(SpanExporter):
    """Receives every batch (so the processor does its real work) and drops it."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


@contextlib.asynccontextmanager
async def open_saver(name: str, url: str, provider: TracerProvider) -> AsyncIterator[Any]:
    """Each saver as its own documentation builds it (no TTL for the competitors: their
    TTL is extra commands per write; ours is inside the one script)."""
    if name in (SIDECAR, SIDECAR_NOOP):
        prefix = "bench-lg" if name == SIDECAR else "bench-lg-noop"
        cfg = CheckpointConfig(key_prefix=prefix, budget_ms=1000, ttl_seconds=86400)
        tracing = provider if name == SIDECAR else NoOpTracerProvider()
        async with Checkpointer.from_url(
            url, config=cfg, registry=CollectorRegistry(), tracer_provider=tracing
        ) as cp:
            yield SidecarSaver(cp)
    elif name == MEMORY:
        yield InMemorySaver()
    elif name == PLAIN:
        from langgraph_checkpoint_plainredis import AsyncRedisSaver

        plain = AsyncRedisSaver(url=url, socket_timeout=None)
        try:
            yield plain
        finally:
            await plain.client.aclose()
    else:
        from langgraph_checkpoint_aws.checkpoint.valkey import AsyncValkeySaver
        from valkey.asyncio import Valkey

        client = Valkey.from_url(url)
        try:
            yield AsyncValkeySaver(client)
        finally:
            await client.aclose()


class Thread:
    """Builds checkpoints the way LangGraph does: one channel (``step``) changes per step."""

    def __init__(self, saver: BaseCheckpointSaver[Any], thread_id: str) -> None:
        self.saver = saver
        self.config: dict[str, Any] = {
            "configurable": {"thread_id": thread_id, "checkpoint_ns": ""}
        }
        self.versions: dict[str, Any] = {}
        self.step = 0

    def next_put(self) -> tuple[dict[str, Any], Any, dict[str, Any], dict[str, Any]]:
        get_next = self.saver.get_next_version
        new: dict[str, Any] = {}
        if not self.versions:
            for ch in ("doc", "plan", "notes"):
                new[ch] = get_next(None, None)
        new["step"] = get_next(self.versions.get("step"), None)
        self.versions.update(new)
        cp = empty_checkpoint()
        cp["channel_values"] = {"doc": DOC, "plan": PLAN, "notes": ["a", "b"], "step": self.step}
        cp["channel_versions"] = dict(self.versions)
        cp["versions_seen"] = {"writer": {"step": self.versions["step"]}}
        md = {"source": "loop", "step": self.step, "parents": {}}
        self.step += 1
        return self.config, cp, md, new

    async def put(self) -> float:
        config, cp, md, new = self.next_put()
        start = time.perf_counter()
        self.config = dict(await self.saver.aput(config, cp, md, new))  # type: ignore[arg-type]
        return time.perf_counter() - start

    def latest(self) -> dict[str, Any]:
        return {"configurable": {"thread_id": self.config["configurable"]["thread_id"],
                                 "checkpoint_ns": ""}}  # fmt: skip

    async def put_writes(self) -> float:
        writes = [("step", self.step), ("branch:to:writer", None)]
        start = time.perf_counter()
        await self.saver.aput_writes(self.config, writes, f"task-{self.step}")  # type: ignore[arg-type]
        return time.perf_counter() - start


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await call()
    return time.perf_counter() - start


async def redis_bytes(admin: aioredis.Redis, keys: Sequence[bytes | str] | None) -> tuple[int, int]:
    """(bytes, keys): MEMORY USAGE summed over ``keys``, or over every key (SCAN) if None."""
    if keys is None:
        keys = [k async for k in admin.scan_iter(count=1000)]
    total = 0
    for key in keys:
        total += int(await admin.memory_usage(key, samples=0) or 0)
    return total, len(keys)


def rotated(names: Sequence[str], i: int) -> list[str]:
    """The savers in a different order each round (seeded by the round: every run the same),
    so drift in the machine hits all alike. A shuffle, not a rotation: a rotation keeps each
    saver behind the same neighbour every round, and one neighbour's 10-20 ms list (plainredis
    reads the whole thread) then slows whoever comes next in every sample."""
    order = list(names)
    random.Random(i).shuffle(order)
    return order


async def fill_size(
    savers: dict[str, Any], size: int, samples: int
) -> tuple[dict[str, dict[str, list[float]]], int, dict[str, dict[str, Any]]]:
    """Fill threads of ``size`` checkpoints, the savers interleaved call by call: put and
    put_writes timings (second half of each fill), the threads used, and each saver's first
    thread (its config for reading the latest checkpoint)."""
    names = list(savers)
    threads = max(1, -(-samples // max(1, size // 2)))
    timings: dict[str, dict[str, list[float]]] = {n: {op: [] for op in OPS} for n in names}
    first: dict[str, dict[str, Any]] = {}
    for t in range(threads):
        fills = {n: Thread(savers[n], f"bench-{size}-{t}") for n in names}
        for i in range(size):
            for n in rotated(names, i):
                took, took_w = await fills[n].put(), await fills[n].put_writes()
                if i >= size - size // 2:
                    timings[n]["put"].append(took)
                    timings[n]["put_writes"].append(took_w)
        if t == 0:
            first = {n: fills[n].latest() for n in names}
    return timings, threads, first


async def read_sizes(
    savers: dict[str, Any],
    firsts: dict[int, dict[str, dict[str, Any]]],
    timings: dict[int, dict[str, dict[str, list[float]]]],
    reads: int,
) -> None:
    """get_tuple and list(limit=10) on a thread of each length, every length and saver
    interleaved call by call in one phase (shuffled every round): what differs between the
    lengths is the thread's history, not the machine's state at the time each was read."""
    names = list(savers)
    sizes = list(firsts)
    for r in range(reads):
        for size in rotated(sizes, r):
            for n in rotated(names, r * len(sizes) + size):
                saver, latest = savers[n], firsts[size][n]
                timings[size][n]["get_tuple"].append(
                    await timed(lambda s=saver, c=latest: s.aget_tuple(c))  # type: ignore[misc]
                )
                timings[size][n]["list"].append(
                    await timed(lambda s=saver, c=latest: _drain(s.alist(c, limit=10)))  # type: ignore[misc]
                )
    for size in sizes:  # every saver answered right (figures of a wrong answer mean nothing)
        for n in names:
            got = await savers[n].aget_tuple(firsts[size][n])
            listed = await _drain(savers[n].alist(firsts[size][n], limit=10))
            if got is None or got.checkpoint["channel_values"]["step"] != size - 1:
                raise RuntimeError(f"{n}: get_tuple did not return the latest checkpoint")
            if len(listed) != min(10, size):
                raise RuntimeError(f"{n}: list(limit=10) returned {len(listed)} checkpoints")


async def bench_sizes(
    savers: dict[str, Any], sizes: Sequence[int], samples: int, reads: int
) -> dict[int, dict[str, dict[str, Any]]]:
    """Timings at each thread length: the fills one length after another, then the reads of
    every length in one interleaved phase."""
    timings: dict[int, dict[str, dict[str, list[float]]]] = {}
    threads: dict[int, int] = {}
    firsts: dict[int, dict[str, dict[str, Any]]] = {}
    for size in sizes:
        gc.collect()
        timings[size], threads[size], firsts[size] = await fill_size(savers, size, samples)
        console.print(f"  {size} checkpoints: filled")
    await read_sizes(savers, firsts, timings, reads)
    return {
        size: {
            n: {"threads": threads[size], **{op: stats_ms(timings[size][n][op]) for op in OPS}}
            for n in savers
        }
        for size in sizes
    }


async def bytes_per_checkpoint(
    name: str, saver: Any, admin: aioredis.Redis, size: int, threads: int
) -> float:
    """Fill ``threads`` threads of ``size`` checkpoints alone on the server; bytes each."""
    await admin.flushall()
    ids = [f"bytes-{size}-{t}" for t in range(threads)]
    for thread_id in ids:
        thread = Thread(saver, thread_id)
        for _ in range(size):
            await thread.put()
            await thread.put_writes()
    own = None
    if name == SIDECAR:  # our keys, named without SCAN; checked against a SCAN of the server
        own = [k for t in ids for k in saver.thread_keys(t) if await admin.exists(k)]
    used, nkeys = await redis_bytes(admin, own)
    if own is not None and nkeys != (await redis_bytes(admin, None))[1]:
        raise RuntimeError("SidecarSaver wrote a key outside saver.thread_keys()")
    await admin.flushall()
    return used / (threads * size)


async def _drain(iterator: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in iterator]


class ReportState(TypedDict):
    topic: str
    outline: str
    draft: str
    review: str
    final: str


def report_graph(saver: Any) -> Any:
    """Four nodes, each adding a ~1 KB section: the seed's report as a graph."""

    def node(name: str, source: str) -> Callable[[ReportState], dict[str, str]]:
        def run(state: ReportState) -> dict[str, str]:
            return {name: (state[source] + " " + name) * 1 + "x" * 1000}  # type: ignore[literal-required]

        return run

    graph = StateGraph(ReportState)
    graph.add_node("outline_node", node("outline", "topic"))
    graph.add_node("draft_node", node("draft", "outline"))
    graph.add_node("review_node", node("review", "draft"))
    graph.add_node("final_node", node("final", "review"))
    graph.add_edge(START, "outline_node")
    graph.add_edge("outline_node", "draft_node")
    graph.add_edge("draft_node", "review_node")
    graph.add_edge("review_node", "final_node")
    graph.add_edge("final_node", END)
    return graph.compile(checkpointer=saver)


async def bench_graph(savers: dict[str, Any], runs: int) -> dict[str, dict[str, float]]:
    apps = {n: report_graph(saver) for n, saver in savers.items()}
    start_state = {"topic": "q3", "outline": "", "draft": "", "review": "", "final": ""}
    samples: dict[str, list[float]] = {n: [] for n in savers}
    for i in range(runs + 5):
        config = {"configurable": {"thread_id": f"graph-{i}"}}
        for n in rotated(list(savers), i):
            took = await timed(lambda n=n, c=config: apps[n].ainvoke(start_state, c))  # type: ignore[misc]
            if i >= 5:
                samples[n].append(took)
    return {n: stats_ms(v) for n, v in samples.items()}


async def run(url: str, quick: bool) -> dict[str, Any]:
    exporter = DropExporter()
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(exporter, max_queue_size=1 << 17, max_export_batch_size=2048)
    )
    sizes = (10, 100) if quick else SIZES
    samples, reads, graph_runs = (20, 20, 5) if quick else (200, 200, 50)
    admin = aioredis.Redis.from_url(url)
    figures: dict[str, Any] = {
        "server": server_version(await admin.info("server")),
        "sizes": list(sizes),
        "savers": {n: {} for n in (SIDECAR, SIDECAR_NOOP, MEMORY, PLAIN, AWS)},
    }
    async with contextlib.AsyncExitStack() as stack:
        savers = {
            n: await stack.enter_async_context(open_saver(n, url, provider))
            for n in figures["savers"]
        }
        await bench_sizes(savers, [20], 20, 20)  # warm-up: connections, scripts, first calls
        await admin.flushall()
        for size, per_saver in (await bench_sizes(savers, sizes, samples, reads)).items():
            for n, f in per_saver.items():
                figures["savers"][n][str(size)] = f
        console.print("  timings done")
        for size in sizes:
            for n in (SIDECAR, PLAIN, AWS):
                threads = figures["savers"][n][str(size)]["threads"]
                figures["savers"][n][str(size)][
                    "bytes_per_checkpoint"
                ] = await bytes_per_checkpoint(n, savers[n], admin, size, threads)
        for n, f in (await bench_graph(savers, graph_runs)).items():
            figures["savers"][n]["graph"] = f
    await admin.aclose()
    provider.force_flush()
    figures["spans_exported"] = exporter.spans
    provider.shutdown()
    return figures


def verdict(figures: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, checked against this run's figures."""
    savers = figures["savers"]
    big = str(figures["sizes"][-1])
    small = str(figures["sizes"][0])
    redis_savers = [n for n in savers if n not in (MEMORY, SIDECAR_NOOP)]
    fastest = {op: min(redis_savers, key=lambda n: savers[n][big][op]["p50_ms"]) for op in OPS}
    ours = savers[SIDECAR]
    flat = {op: ours[big][op]["p50_ms"] / ours[small][op]["p50_ms"] for op in ("get_tuple", "list")}
    leanest = min(redis_savers, key=lambda n: savers[n][big]["bytes_per_checkpoint"])
    return {"fastest_at_largest": fastest, "growth_small_to_large": flat, "leanest": leanest}


def markdown(figures: dict[str, Any]) -> str:
    """The tables of docs/benchmarks.md, from one run's figures."""
    sizes, savers = figures["sizes"], figures["savers"]
    head = "| saver | " + " | ".join(f"{s} checkpoints" for s in sizes) + " |\n"
    rule = "|---|" + "---:|" * len(sizes) + "\n"
    out = []
    for op in OPS:
        rows = "".join(
            f"| {name} | "
            + " | ".join(
                f"{fmt_ms(per[str(s)][op]['p50_ms'])} / {fmt_ms(per[str(s)][op]['p99_ms'])}"
                for s in sizes
            )
            + " |\n"
            for name, per in savers.items()
        )
        out.append(f"**{op}** (p50 / p99)\n\n{head}{rule}{rows}")
    rows = "".join(
        f"| {name} | "
        + " | ".join(f"{per[str(s)]['bytes_per_checkpoint']:,.0f} B" for s in sizes)
        + " |\n"
        for name, per in savers.items()
        if "bytes_per_checkpoint" in per[str(sizes[0])]
    )
    out.append(f"**Redis bytes per checkpoint** (MEMORY USAGE summed)\n\n{head}{rule}{rows}")
    rows = "".join(
        f"| {n} | {fmt_ms(p['graph']['p50_ms'])} | {fmt_ms(p['graph']['p99_ms'])} |\n"
        for n, p in savers.items()
    )
    out.append(
        "**4-node StateGraph, wall time per ainvoke**\n\n| saver | p50 | p99 |\n|---|---:|---:|\n"
        + rows
    )
    return "\n".join(out)


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument(
        "--markdown", type=Path, metavar="PATH", help="also write the tables as Markdown"
    )
    args = p.parse_args()
    with bench_server(binary=args.server) as server:
        figures = asyncio.run(run(server.url, args.quick))
    figures["machine"] = machine()
    figures["verdict"] = verdict(figures)
    savers = figures["savers"]
    for op in OPS:
        rows = []
        for name, per in savers.items():
            cells = []
            for size in figures["sizes"]:
                f = per[str(size)][op]
                cells.append(f"{fmt_ms(f['p50_ms'])} / {fmt_ms(f['p99_ms'])}")
            rows.append((name, *cells))
        console.print(
            table(
                f"{op}: p50 / p99 by thread length ({figures['server']})",
                ("saver", *(f"{s} checkpoints" for s in figures["sizes"])),
                rows,
            )
        )
    console.print(
        table(
            "Redis bytes per checkpoint (MEMORY USAGE summed over the saver's keys)",
            ("saver", *(f"{s} checkpoints" for s in figures["sizes"])),
            [
                (name, *(f"{per[str(s)]['bytes_per_checkpoint']:,.0f} B" for s in figures["sizes"]))
                for name, per in savers.items()
                if "bytes_per_checkpoint" in per[str(figures["sizes"][0])]
            ],
        )
    )
    console.print(
        table(
            "A real 4-node StateGraph: wall time per ainvoke (fresh thread)",
            ("saver", "p50", "p99"),
            [
                (n, fmt_ms(p["graph"]["p50_ms"]), fmt_ms(p["graph"]["p99_ms"]))
                for n, p in savers.items()
            ],
        )
    )
    v = figures["verdict"]
    console.print(
        f"fastest Redis saver at {figures['sizes'][-1]} checkpoints: "
        + ", ".join(f"{op} → {who}" for op, who in v["fastest_at_largest"].items())
        + f"; SidecarSaver p50 growth {figures['sizes'][0]}→{figures['sizes'][-1]}: "
        + ", ".join(f"{op} {g:.2f}×" for op, g in v["growth_small_to_large"].items())
        + f"; fewest bytes per checkpoint: {v['leanest']}; spans exported: "
        f"{figures['spans_exported']}"
    )
    write_json(args.json, figures)
    if args.markdown is not None:
        args.markdown.write_text(markdown(figures))


if __name__ == "__main__":
    main()
