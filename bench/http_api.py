"""The hop of the HTTP API: the same calls in-process (library) and from Node through the API.

    python bench/http_api.py [--quick] [--iterations N] [--seconds S] [--json PATH]

One private Valkey; the sidecar runs as a real ``checkpoint-sidecar serve`` process (the API on
its own port, default settings: no tracing SDK). In the same run, on the same (user, run) with
the same 2 KB section: ``save_section`` and the resume view (sections in completion order,
progress, age), first by the library in this process, then by the Node client
(``bench/http_api_node.mjs``, keep-alive) through the API, alternating rounds so drift hits
both. The hop is the difference per percentile. Then saves/s from 32 concurrent Node requests.
For scale, the same Node calls also go to a no-op ASGI app on the same uvicorn + uvloop set-up
(``--floor-server`` mode of this script): the cost of the HTTP round trip alone on this machine.
Targets (issue 12): hop ≤ 0.3 ms p50, ≤ 0.4 ms p90, API p99 < 2 ms, ≥ 3,000 saves/s.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    ROOT,
    bench_server,
    console,
    machine,
    parser,
    quantile,
    section_content,
    table,
    write_json,
)
from prometheus_client import CollectorRegistry

from sidecar import CheckpointConfig, Checkpointer, RunContext
from sidecar.server.embedded import stop_process

USER, RUN = "bench-user", "bench-run"
SECTIONS = ("summary", "data_analysis", "recommendations", "action_items")
QS = (0.5, 0.9, 0.99)


def pcts(samples_us: list[float]) -> dict[str, float]:
    return {f"p{round(q * 100)}_ms": quantile(samples_us, q) / 1000 for q in QS}


async def library_round(cp: Checkpointer, n: int, content: Any) -> tuple[list[float], list[float]]:
    ctx = RunContext(user_id=USER, run_id=RUN)
    mgr = cp.manager(ctx)
    save, view = [], []
    for i in range(n):
        t0 = time.perf_counter()
        await mgr.save_section(SECTIONS[i % 4], content)
        save.append((time.perf_counter() - t0) * 1e6)
    for _ in range(n):
        t0 = time.perf_counter()
        await mgr.resume_view()
        view.append((time.perf_counter() - t0) * 1e6)
    return save, view


def start_sidecar(url: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    out = workdir / "sidecar.out"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SIDECAR_", "OTEL_", "PROMETHEUS_"))
    }
    env["PYTHONPATH"] = str(ROOT)
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "--redis-url", url, "--port", "0", "--api-port", "0"],
            stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"^api (\S+) \(", out.read_text(), re.M)
        if match:
            return proc, match.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop_process(proc)
    raise SystemExit(f"the sidecar did not start: {out.read_text()[-2000:]}")


async def floor_server() -> None:
    """A no-op ASGI app (204 to everything) on uvicorn + uvloop: the HTTP floor."""
    import socket

    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    print(f"api http://127.0.0.1:{sock.getsockname()[1]} (floor)", flush=True)
    config = uvicorn.Config(
        app, lifespan="off", log_config=None, access_log=False, proxy_headers=False
    )
    await uvicorn.Server(config).serve(sockets=[sock])


def start_floor(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    out = workdir / "floor.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--floor-server"], stdout=sink, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"^api (\S+) \(", out.read_text(), re.M)
        if match:
            return proc, match.group(1)
        time.sleep(0.05)
    stop_process(proc)
    raise SystemExit(f"the floor server did not start: {out.read_text()[-2000:]}")


def node_round(
    node: str, api: str, n: int, content: Any, seconds: float, workdir: Path
) -> dict[str, Any]:
    out = workdir / "node.out"
    with out.open("wb") as sink:
        code = subprocess.run(
            [node, str(ROOT / "bench" / "http_api_node.mjs"), api, USER, RUN, str(n),
             json.dumps(content), str(seconds), "32"],
            stdout=sink, stderr=subprocess.STDOUT, timeout=600, check=False,
        ).returncode  # fmt: skip
    text = out.read_text()
    if code != 0:
        raise SystemExit(f"node failed ({code}): {text[-2000:]}")
    result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    return result


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=2000, help="calls per round and verb")
    p.add_argument("--rounds", type=int, default=3, help="alternating library / Node rounds")
    p.add_argument("--seconds", type=float, default=5.0, help="throughput phase length")
    args = p.parse_args()
    if args.quick:
        args.iterations, args.rounds, args.seconds = 200, 1, 1.0
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node is not on PATH")
    content = section_content("summary")
    lib: dict[str, list[float]] = {"save": [], "view": []}
    floor: dict[str, list[float]] = {"save": [], "view": []}
    api: dict[str, list[float]] = {"save": [], "view": []}
    throughput: list[dict[str, Any]] = []
    with bench_server(binary=args.server) as server, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        proc, api_url = start_sidecar(server.url, workdir)
        floor_proc, floor_url = start_floor(workdir)
        cp = Checkpointer.from_url(
            server.url, config=CheckpointConfig(strict=True), registry=CollectorRegistry()
        )
        try:
            await library_round(cp, 200, content)  # warm-up
            for r in range(args.rounds):
                save, view = await library_round(cp, args.iterations, content)
                lib["save"] += save
                lib["view"] += view
                last = r == args.rounds - 1
                result = await asyncio.to_thread(
                    node_round,
                    node,
                    api_url,
                    args.iterations,
                    content,
                    args.seconds if last else 0,
                    workdir,
                )
                api["save"] += result["save_us"]
                api["view"] += result["view_us"]
                noop = await asyncio.to_thread(
                    node_round, node, floor_url, args.iterations, content, 0, workdir
                )
                floor["save"] += noop["save_us"]
                floor["view"] += noop["view_us"]
                if result["throughput"]:
                    throughput.append(result["throughput"])
        finally:
            await cp.aclose()
            stop_process(proc)
            stop_process(floor_proc)
    figures: dict[str, Any] = {
        "machine": machine(),
        "iterations": args.iterations,
        "rounds": args.rounds,
    }
    rows = []
    for verb, label in (("save", "save_section"), ("view", "resume view")):
        lp, ap, fp = pcts(lib[verb]), pcts(api[verb]), pcts(floor[verb])
        hop = {k: ap[k] - lp[k] for k in lp}
        figures[verb] = {
            "library": lp,
            "api": ap,
            "hop": hop,
            "http_floor": fp,
            "n": len(api[verb]),
        }
        rows.append(
            [
                label,
                *(f"{lp[k] * 1000:.0f} → {ap[k] * 1000:.0f} µs (+{hop[k] * 1000:.0f})" for k in lp),
            ]
        )
        rows.append([f"  no-op app, {label} shape", *(f"{fp[k] * 1000:.0f} µs" for k in fp)])
    console.print(
        table(
            "HTTP API hop: library in-process → Node through the API (keep-alive)",
            ["call", "p50", "p90", "p99"],
            rows,
        )
    )
    tp = throughput[-1] if throughput else None
    figures["throughput"] = tp
    if tp:
        console.print(
            f"saves/s from 32 concurrent Node requests: {tp['saves_per_s']:.0f} ({tp['errors']} errors, {tp['seconds']:.1f} s)"
        )
    s = figures["save"]
    console.print(
        "targets: hop ≤ 0.3 ms p50 / ≤ 0.4 ms p90, API p99 < 2 ms, ≥ 3,000 saves/s → "
        f"save hop {s['hop']['p50_ms'] * 1000:.0f} / {s['hop']['p90_ms'] * 1000:.0f} µs, "
        f"API p99 {s['api']['p99_ms']:.2f} ms, "
        + (f"{tp['saves_per_s']:.0f} saves/s" if tp else "no throughput phase")
    )
    write_json(args.json, figures)


if __name__ == "__main__":
    if "--floor-server" in sys.argv:
        import uvloop

        uvloop.run(floor_server())
    else:
        asyncio.run(main())
