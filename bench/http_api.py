"""The hop of the HTTP API: the same calls in-process (library) and from Node through the API.

    python bench/http_api.py [--quick] [--iterations N] [--seconds S] [--transports LIST]
                             [--listen tcp|unix] [--json PATH]

One private Valkey; the sidecar runs as a real ``checkpoint-sidecar serve`` process (the API on
its own port, default settings: no tracing SDK). In the same run, on the same (user, run) with
the same 2 KB section: ``save_section`` and the resume view (sections in completion order,
progress, age), first by the library in this process, then by the Node client
(``bench/http_api_node.mjs``, keep-alive) through the API, alternating rounds so drift hits
both. The hop is the difference per percentile. Then saves/s from 32 concurrent Node requests.
For scale, the same Node calls also go to a no-op ASGI app on the same uvicorn + uvloop set-up
(``--floor-server`` mode of this script): the cost of the HTTP round trip alone on this machine.
It answers a save with 204 and the resume view with 200 and the very bytes the API answers
(~8.4 KB), so each floor carries its call's response.

The Node client's transports (``--transports``, default ``socket,http``: the lean node:net
client, the default, and node:http) are measured in the same Node process, alternating call by
call, the order flipping every call pair, so neither always goes first; each transport's
figures are also split by position (first or second in its pair), which shows the position
bias. The first transport listed is the "api" of the JSON; throughput is measured per
transport. ``--listen unix`` serves the API and the no-op app on Unix sockets instead of
127.0.0.1. Targets (issue 12): hop ≤ 0.3 ms p50, ≤ 0.4 ms p90, API p99 < 2 ms,
≥ 3,000 saves/s.
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
from sidecar.api.view import view_json
from sidecar.codec import STORED_JSON
from sidecar.server.embedded import stop_process

USER, RUN = "bench-user", "bench-run"
SECTIONS = ("summary", "data_analysis", "recommendations", "action_items")
QS = (0.5, 0.9, 0.99)


def _codes(throughput: dict[str, Any]) -> str:
    """``: budget_exceeded 1, ...``: what the failed saves of the throughput phase answered."""
    codes = throughput.get("error_codes") or {}
    return (": " + ", ".join(f"{k} {v}" for k, v in sorted(codes.items()))) if codes else ""


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


async def api_view_body(cp: Checkpointer) -> bytes:
    """The bytes the API answers for this run's resume view (its own encoder, same sections)."""
    return view_json(
        await cp.manager(RunContext(user_id=USER, run_id=RUN)).resume_view(STORED_JSON)
    )


def start_sidecar(
    url: str, workdir: Path, listen: str = "tcp"
) -> tuple[subprocess.Popen[bytes], str]:
    out = workdir / "sidecar.out"
    where = ["--api-port", "0"] if listen == "tcp" else ["--api-socket", str(workdir / "api.sock")]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SIDECAR_", "OTEL_", "PROMETHEUS_"))
    }
    env["PYTHONPATH"] = str(ROOT)
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "--redis-url", url, "--port", "0", *where],
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


async def floor_server(view_body: bytes, socket_path: str | None = None) -> None:
    """A no-op ASGI app on uvicorn + uvloop: the HTTP floor (on TCP, or on the Unix socket
    ``socket_path``). A GET answers 200 with ``view_body`` (the API's resume view, so the
    floor carries the same response bytes), anything else 204."""
    import socket

    import uvicorn

    view_head = [(b"content-type", b"application/json")]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        get = scope["method"] == "GET"
        await send(
            {"type": "http.response.start", "status": 200 if get else 204,
             "headers": view_head if get else []}
        )  # fmt: skip
        await send({"type": "http.response.body", "body": view_body if get else b""})

    if socket_path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(socket_path)
        where = f"unix:{socket_path}"
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        where = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.listen(128)
    print(f"api {where} (floor)", flush=True)
    config = uvicorn.Config(
        app, lifespan="off", log_config=None, access_log=False, proxy_headers=False
    )
    await uvicorn.Server(config).serve(sockets=[sock])


def start_floor(
    workdir: Path, view_body: bytes, listen: str = "tcp"
) -> tuple[subprocess.Popen[bytes], str]:
    out = workdir / "floor.out"
    body = workdir / "view.json"
    body.write_bytes(view_body)
    where = [] if listen == "tcp" else [str(workdir / "floor.sock")]
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--floor-server", str(body), *where], stdout=sink,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
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
    node: str, api: str, n: int, content: Any, seconds: float, workdir: Path,
    transports: list[str],
) -> dict[str, Any]:  # fmt: skip
    out = workdir / "node.out"
    with out.open("wb") as sink:
        code = subprocess.run(
            [node, str(ROOT / "bench" / "http_api_node.mjs"), api, USER, RUN, str(n),
             json.dumps(content), str(seconds), "32", ",".join(transports)],
            stdout=sink, stderr=subprocess.STDOUT, timeout=600, check=False,
        ).returncode  # fmt: skip
    text = out.read_text()
    if code != 0:
        raise SystemExit(f"node failed ({code}): {text[-2000:]}")
    result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    return result


Samples = dict[str, list[float]]


def by_position(result: dict[str, Any], verb: str) -> tuple[list[float], list[float]]:
    """A transport's samples of one verb, split by position in their pair (first, second)."""
    us, first = result[f"{verb}_us"], result[f"{verb}_first"]
    return [t for t, f in zip(us, first, strict=True) if f], [
        t for t, f in zip(us, first, strict=True) if not f
    ]


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=2000, help="calls per round and verb")
    p.add_argument("--rounds", type=int, default=3, help="alternating library / Node rounds")
    p.add_argument("--seconds", type=float, default=5.0, help="throughput phase length")
    p.add_argument(
        "--transports",
        default="socket,http",
        help="Node client transports, alternated call by call (first: the JSON's 'api')",
    )
    p.add_argument(
        "--listen",
        choices=("tcp", "unix"),
        default="tcp",
        help="the API (and the no-op app) on 127.0.0.1 (default) or on a Unix socket",
    )
    args = p.parse_args()
    if args.quick:
        args.iterations, args.rounds, args.seconds = 200, 1, 1.0
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node is not on PATH")
    kinds = args.transports.split(",")
    content = section_content("summary")
    lib: Samples = {"save": [], "view": []}
    # [transport][verb] -> samples; [transport][verb + position] for the position split
    floor: dict[str, Samples] = {k: {} for k in kinds}
    api: dict[str, Samples] = {k: {} for k in kinds}
    throughput: dict[str, dict[str, Any]] = {}
    with bench_server(binary=args.server) as server, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        proc, api_url = start_sidecar(server.url, workdir, args.listen)
        cp = Checkpointer.from_url(
            server.url, config=CheckpointConfig(strict=True), registry=CollectorRegistry()
        )
        floor_proc = None
        try:
            await library_round(cp, 200, content)  # warm-up
            floor_proc, floor_url = start_floor(workdir, await api_view_body(cp), args.listen)
            for r in range(args.rounds):
                save, view = await library_round(cp, args.iterations, content)
                lib["save"] += save
                lib["view"] += view
                last = r == args.rounds - 1
                order = kinds if r % 2 == 0 else kinds[::-1]  # throughput order flips too
                for url, seconds, sink in ((api_url, args.seconds if last else 0, api),
                                           (floor_url, 0, floor)):  # fmt: skip
                    result = await asyncio.to_thread(
                        node_round, node, url, args.iterations, content, seconds, workdir, order
                    )
                    for kind in kinds:
                        got = result["transports"][kind]
                        for verb in ("save", "view"):
                            first, second = by_position(got, verb)
                            sink[kind].setdefault(verb, []).extend(got[f"{verb}_us"])
                            sink[kind].setdefault(verb + "_first", []).extend(first)
                            sink[kind].setdefault(verb + "_second", []).extend(second)
                        if got["throughput"]:
                            throughput[kind] = got["throughput"]
        finally:
            await cp.aclose()
            stop_process(proc)
            if floor_proc is not None:
                stop_process(floor_proc)
    figures: dict[str, Any] = {
        "machine": machine(),
        "iterations": args.iterations,
        "rounds": args.rounds,
        "transports": kinds,
        "listen": args.listen,
    }
    rows = []
    for verb, label in (("save", "save_section"), ("view", "resume view")):
        lp = pcts(lib[verb])
        per: dict[str, Any] = {}
        for kind in kinds:
            ap, fp = pcts(api[kind][verb]), pcts(floor[kind][verb])
            hop = {k: ap[k] - lp[k] for k in lp}
            per[kind] = {
                "api": ap,
                "hop": hop,
                "http_floor": fp,
                "hop_first": {k: v - lp[k] for k, v in pcts(api[kind][verb + "_first"]).items()},
                "hop_second": {k: v - lp[k] for k, v in pcts(api[kind][verb + "_second"]).items()},
                "n": len(api[kind][verb]),
            }
            rows.append(
                [
                    f"{label} ({kind})",
                    *(
                        f"{lp[k] * 1000:.0f} → {ap[k] * 1000:.0f} µs (+{hop[k] * 1000:.0f})"
                        for k in lp
                    ),
                ]
            )
            if len(kinds) > 1:
                rows.append(
                    [
                        "  hop when first / second",
                        *(
                            f"+{per[kind]['hop_first'][k] * 1000:.0f} / "
                            f"+{per[kind]['hop_second'][k] * 1000:.0f} µs"
                            for k in lp
                        ),
                    ]
                )
            rows.append(
                [f"  no-op app, {label} shape ({kind})", *(f"{fp[k] * 1000:.0f} µs" for k in fp)]
            )
        main_kind = per[kinds[0]]
        figures[verb] = {
            "library": lp,
            "api": main_kind["api"],
            "hop": main_kind["hop"],
            "http_floor": main_kind["http_floor"],
            "n": main_kind["n"],
            "transports": per,
        }
    console.print(
        table(
            f"HTTP API hop: library in-process → Node through the API (keep-alive, {args.listen})",
            ["call", "p50", "p90", "p99"],
            rows,
        )
    )
    tp = throughput.get(kinds[0])
    figures["throughput"] = tp
    figures["throughput_by_transport"] = throughput
    for kind, got in throughput.items():
        console.print(
            f"saves/s from 32 concurrent Node requests ({kind}): {got['saves_per_s']:.0f} "
            f"({got['errors']} errors{_codes(got)}, {got['seconds']:.1f} s, "
            f"{got['connections']} connections)"
        )
    s = figures["save"]
    console.print(
        f"targets: hop ≤ 0.3 ms p50 / ≤ 0.4 ms p90, API p99 < 2 ms, ≥ 3,000 saves/s → ({kinds[0]}) "
        f"save hop {s['hop']['p50_ms'] * 1000:.0f} / {s['hop']['p90_ms'] * 1000:.0f} µs, "
        f"API p99 {s['api']['p99_ms']:.2f} ms, "
        + (f"{tp['saves_per_s']:.0f} saves/s" if tp else "no throughput phase")
    )
    write_json(args.json, figures)


if __name__ == "__main__":
    if "--floor-server" in sys.argv:
        import uvloop

        i = sys.argv.index("--floor-server")
        body, where = Path(sys.argv[i + 1]).read_bytes(), sys.argv[i + 2 : i + 3]
        uvloop.run(floor_server(body, where[0] if where else None))
    else:
        asyncio.run(main())
