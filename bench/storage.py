"""What sits in Redis, and what it costs: compression, encryption and replicated saves.

    python bench/storage.py [--quick] [--iterations N] [--json PATH] [--server BINARY]

All in one run, against the plain path measured in the same run:

1. **Redis bytes per run** (``MEMORY USAGE`` of every key of the run) for four sections of real
   English text (``bench/data/report-text.txt``: the Python Language Reference, PSF licence)
   of 2 KB and 20 KB each, saved through the library: plain JSON, zstd, DEFLATE (ISA-L),
   AES-256-GCM, and each codec with AES-256-GCM.
2. **CPU per section**: what sealing (compress + encrypt) and opening cost, alone, per 2 KB and
   20 KB section (best of five batches; no Redis).
3. **Save and load p50 through the library**, one 20 KB (and 2 KB) section per call, the four
   forms alternating call by call so that drift in the machine hits them alike.
4. **Replicated saves**: a primary and one replica (private servers, loopback); save p50 with
   ``min_replicas=0`` and ``1``, and ``min_local_fsync`` on a primary with an AOF.

Figures are printed, never asserted. Targets (issue 13): ≥ 2.5× less memory on the 20 KB
sections, ≤ 30 µs added per 20 KB save. Needs the ``[zstd,deflate,encryption]`` extras.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from _common import (
    ROOT,
    SECTIONS,
    bench_server,
    console,
    fmt_ratio,
    machine,
    parser,
    quantile,
    server_version,
    table,
    write_json,
)
from prometheus_client import CollectorRegistry

from sidecar import CheckpointConfig, Checkpointer, RunContext
from sidecar.keys import run_keys
from sidecar.seal import DEFLATE_LEVEL, ZSTD_LEVEL, Sealer, binding
from sidecar.server.embedded import EmbeddedServer
from sidecar.store import build_client, close_client

sys.path.insert(0, str(ROOT / "tests"))
from replica_support import replicate, start_server, wait_link_up

TEXT = (ROOT / "bench" / "data" / "report-text.txt").read_text(encoding="utf-8")
SIZES = {"2 KB": 2048, "20 KB": 20480}
KEY = "bench:" + base64.b64encode(os.urandom(32)).decode()
FORMS: dict[str, dict[str, Any]] = {
    "plain": {"compression": "none"},
    "zstd": {"compression": "zstd"},
    "deflate": {"compression": "deflate"},
    "aes-gcm": {"compression": "none", "encryption_keys": [KEY]},
    "zstd+aes-gcm": {"compression": "zstd", "encryption_keys": [KEY]},
    "deflate+aes-gcm": {"compression": "deflate", "encryption_keys": [KEY]},
}


def section(i: int, size: int) -> dict[str, str]:
    """Section ``i`` of a report: its own slice of the text, JSON of about ``size`` bytes."""
    start = (i * 20480) % max(1, len(TEXT) - size)
    return {"title": SECTIONS[i].replace("_", " ").title(), "body": TEXT[start : start + size - 40]}


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} µs"


def config(form: str, **extra: Any) -> CheckpointConfig:
    return CheckpointConfig(budget_ms=5000, **FORMS[form], **extra)


# --- 1. memory ------------------------------------------------------------------------------


async def memory(url: str) -> dict[str, dict[str, int]]:
    client = build_client(url)
    out: dict[str, dict[str, int]] = {}
    try:
        for label, size in SIZES.items():
            out[label] = {}
            for form in FORMS:
                await client.flushall()
                ctx = RunContext(user_id="bench", run_id=f"{form}-{size}")
                async with Checkpointer(client, config(form), registry=CollectorRegistry()) as cp:
                    mgr = cp.manager(ctx)
                    for i, name in enumerate(SECTIONS):
                        assert await mgr.save_section(name, section(i, size))
                keys = run_keys("ckpt", ctx.user_id, ctx.run_id)
                total = 0
                for key in keys.all:
                    used = await client.memory_usage(key, samples=0)
                    total += int(used or 0)
                out[label][form] = total
    finally:
        await close_client(client)
    return out


# --- 2. CPU ---------------------------------------------------------------------------------


def best_per_call(fn: Callable[[], Any], n: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def cpu(n: int) -> dict[str, dict[str, dict[str, float]]]:
    aad = binding("ckpt", "bench", "run", "summary")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for label, size in SIZES.items():
        payload = json.dumps(section(1, size)).encode()
        out[label] = {}
        for form in FORMS:
            sealer = Sealer.from_config(config(form))
            stored = sealer.seal(payload, aad)
            out[label][form] = {
                "seal_s": best_per_call(lambda s=sealer, p=payload: s.seal(p, aad), n),
                "open_s": best_per_call(lambda s=sealer, v=stored: s.open(v, aad), n),
                "json_bytes": len(payload),
                "stored_bytes": len(stored),
            }
    return out


def codec_sweep(n: int) -> dict[str, dict[str, float]]:
    """Compress CPU and ratio of the four 20 KB sections for each zstd level (the library's
    default is 1; negative levels are zstd's fast modes) and each ISA-L DEFLATE level (the
    library's default is 0), and which settings reach 2.5x within 30 µs."""
    import zstandard
    from isal import igzip_lib

    payloads = [json.dumps(section(i, SIZES["20 KB"])).encode() for i in range(len(SECTIONS))]
    raw = sum(len(p) for p in payloads)
    codecs: dict[str, Callable[[bytes], bytes]] = {
        f"zstd {level}": zstandard.ZstdCompressor(level=level).compress
        for level in (-7, -5, -3, -1, 1, 2, 3)
    }
    for level in (0, 1, 2, 3):
        codecs[f"deflate {level}"] = partial(
            igzip_lib.compress, level=level, flag=igzip_lib.COMP_DEFLATE
        )
    out: dict[str, dict[str, float]] = {}
    for name, compress in codecs.items():
        packed = sum(len(compress(p)) for p in payloads)
        per_batch = best_per_call(lambda c=compress: [c(p) for p in payloads], n)
        out[name] = {"compress_s": per_batch / len(payloads), "ratio": raw / packed}
    return out


# --- 3. latency through the library --------------------------------------------------------

Call = Callable[[], Awaitable[Any]]


async def alternate(calls: dict[str, Call], iterations: int, warmup: int) -> dict[str, list[float]]:
    names = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc.disable()
    try:
        for i in range(warmup + iterations):
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                start = time.perf_counter()
                await calls[name]()
                if i >= warmup:
                    samples[name].append(time.perf_counter() - start)
    finally:
        gc.enable()
    return samples


async def latency(url: str, iterations: int) -> dict[str, dict[str, dict[str, float]]]:
    client = build_client(url)
    out: dict[str, dict[str, dict[str, float]]] = {}
    cps = {form: Checkpointer(client, config(form), registry=CollectorRegistry()) for form in FORMS}
    try:
        await client.flushall()
        for label, size in SIZES.items():
            content = section(1, size)
            saves: dict[str, Call] = {}
            loads: dict[str, Call] = {}
            for form, cp in cps.items():
                mgr = cp.manager(RunContext(user_id="bench", run_id=f"lat-{form}-{size}"))
                saves[form] = lambda m=mgr, c=content: m.save_section("data_analysis", c)
                loads[form] = lambda m=mgr: m.load_section("data_analysis")
            save = await alternate(saves, iterations, warmup=iterations // 10)
            load = await alternate(loads, iterations, warmup=iterations // 10)
            out[label] = {
                form: {"save_p50_s": quantile(save[form], 0.5), "load_p50_s": quantile(load[form], 0.5),
                       "save_p99_s": quantile(save[form], 0.99), "load_p99_s": quantile(load[form], 0.99)}
                for form in FORMS
            }  # fmt: skip
    finally:
        for cp in cps.values():
            await cp.aclose()
        await close_client(client)
    return out


# --- 4. replicated saves ---------------------------------------------------------------------


async def replicated(binary: str | None, iterations: int) -> dict[str, dict[str, float]]:
    from sidecar.server.embedded import find_server_binary

    exe = binary or find_server_binary()
    root = Path(tempfile.mkdtemp(prefix="ckpt-bench-repl-"))
    primary = start_server(
        exe, root / "primary", "--appendonly", "yes", "--appendfsync", "everysec"
    )
    replica = start_server(exe, root / "replica")
    servers: list[EmbeddedServer] = [primary, replica]
    out: dict[str, dict[str, float]] = {}
    try:
        replicate(replica.port, primary.port)
        await wait_link_up(replica.port, primary.port)
        client = build_client(primary.url)
        variants = {
            "min_replicas=0": config("plain"),
            "min_replicas=1": config("plain", min_replicas=1),
            "min_local_fsync (everysec)": config("plain", min_local_fsync=True),
        }
        cps = {
            k: Checkpointer(client, v, registry=CollectorRegistry()) for k, v in variants.items()
        }
        try:
            content = section(1, 2048)
            saves: dict[str, Call] = {}
            confirmed: dict[str, list[bool]] = {k: [] for k in variants}
            for name, cp in cps.items():
                mgr = cp.manager(RunContext(user_id="bench", run_id=f"repl-{name}"))

                async def save(m: Any = mgr, n: str = name) -> None:
                    confirmed[n].append(await m.save_section("summary", content))

                saves[name] = save
            samples = await alternate(saves, iterations, warmup=iterations // 10)
            for name in variants:
                out[name] = {
                    "save_p50_s": quantile(samples[name], 0.5),
                    "save_p99_s": quantile(samples[name], 0.99),
                    "confirmed_share": statistics.fmean(confirmed[name]),
                }
        finally:
            for cp in cps.values():
                await cp.aclose()
            await close_client(client)
    finally:
        for server in servers:
            server.stop()
    return out


# --- report ---------------------------------------------------------------------------------


def report(figures: dict[str, Any]) -> None:
    mem = figures["memory_bytes_per_run"]
    rows = []
    for label in SIZES:
        plain = mem[label]["plain"]
        rows.append([f"4 × {label}", *(f"{mem[label][f]:,} B ({fmt_ratio(plain / mem[label][f])} less)"
                                      if f != "plain" else f"{plain:,} B" for f in FORMS)])  # fmt: skip
    console.print(
        table("Redis bytes per run (MEMORY USAGE, every key of the run)", ["", *FORMS], rows)
    )

    cpu_figures = figures["cpu_per_section"]
    rows = []
    for label in SIZES:
        for form in FORMS:
            c = cpu_figures[label][form]
            rows.append([f"{label} {form}", f"{c['json_bytes']:,} → {c['stored_bytes']:,} B",
                         us(c["seal_s"]), us(c["open_s"])])  # fmt: skip
    console.print(
        table("CPU per section (no Redis; best of 5 batches)", ["", "size", "seal", "open"], rows)
    )

    sweep = figures["codec_levels_20kb"]
    defaults = {f"zstd {ZSTD_LEVEL}", f"deflate {DEFLATE_LEVEL}"}
    rows = [[level + (" (default)" if level in defaults else ""),
             us(f["compress_s"]), f"{f['ratio']:.2f}×"] for level, f in sweep.items()]  # fmt: skip
    console.print(table("Codec levels on the 20 KB sections (CPU per section, JSON bytes ÷ "
                        "compressed bytes)", ["codec level", "compress", "ratio"], rows))  # fmt: skip
    reaching = {name: f["compress_s"] for name, f in sweep.items() if f["ratio"] >= 2.5}
    fast = {name: f["ratio"] for name, f in sweep.items() if f["compress_s"] <= 30e-6}
    cheapest = min(reaching, key=reaching.__getitem__) if reaching else None
    best = max(fast, key=fast.__getitem__) if fast else None
    console.print(
        f"cheapest setting reaching 2.5×: "
        f"{f'{cheapest}, {us(reaching[cheapest])}' if cheapest else 'none'} per section; "
        f"best ratio within 30 µs: {f'{best}, {fast[best]:.2f}×' if best else 'none'}"
    )

    lat = figures["library_p50"]
    rows = []
    for label in SIZES:
        base = lat[label]["plain"]
        for form in FORMS:
            f = lat[label][form]
            rows.append([
                f"{label} {form}", us(f["save_p50_s"]), f"{(f['save_p50_s'] - base['save_p50_s']) * 1e6:+.0f} µs",
                us(f["load_p50_s"]), f"{(f['load_p50_s'] - base['load_p50_s']) * 1e6:+.0f} µs",
            ])  # fmt: skip
    console.print(table("Through the library, p50 per call (forms alternating)",
                        ["", "save", "vs plain", "load", "vs plain"], rows))  # fmt: skip

    repl = figures["replicated_saves"]
    base = repl["min_replicas=0"]["save_p50_s"]
    rows = [[name, us(f["save_p50_s"]), f"{(f['save_p50_s'] - base) * 1e6:+.0f} µs", us(f["save_p99_s"]),
             f"{f['confirmed_share']:.0%}"] for name, f in repl.items()]  # fmt: skip
    console.print(table("Replicated saves (one 2 KB section; primary + 1 replica on loopback)",
                        ["", "save p50", "vs 0", "save p99", "confirmed"], rows))  # fmt: skip


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=2000)
    args = p.parse_args()
    iterations = 200 if args.quick else args.iterations
    figures: dict[str, Any] = {"machine": machine()}
    with bench_server(binary=args.server) as server:
        probe = build_client(server.url)
        try:
            figures["server"] = server_version(await probe.info("server"))
        finally:
            await close_client(probe)
        figures["memory_bytes_per_run"] = await memory(server.url)
        figures["cpu_per_section"] = cpu(200 if args.quick else 2000)
        figures["codec_levels_20kb"] = codec_sweep(50 if args.quick else 500)
        figures["library_p50"] = await latency(server.url, iterations)
    figures["replicated_saves"] = await replicated(args.server, iterations // 2)
    console.print(f"{figures['machine']['date']} · {figures['server']} · {figures['machine']['cpu']}"
                  f" ({figures['machine']['cpus']} CPUs) · Python {figures['machine']['python']}")  # fmt: skip
    report(figures)
    write_json(args.json, figures)


if __name__ == "__main__":
    asyncio.run(main())
