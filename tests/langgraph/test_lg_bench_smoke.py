"""bench/langgraph_savers.py --quick runs, exits 0 and prints its tables (timings are figures,
never asserted; the structure and each saver's right answers are)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "langgraph_savers.py"
SAVERS = (
    "SidecarSaver",
    "SidecarSaver, no-op tracer",
    "InMemorySaver",
    "plainredis",
    "aws ValkeySaver",
)


@pytest.mark.timeout(150)
def test_langgraph_savers_quick(tmp_path: Path) -> None:
    out, figures_path = tmp_path / "bench.out", tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "OTEL_"))}
    with out.open("wb") as sink:  # a file, never an unread PIPE
        code = subprocess.run(
            [sys.executable, str(BENCH), "--quick", "--json", str(figures_path)],
            stdout=sink, stderr=subprocess.STDOUT, env=env, timeout=140, check=False,
        ).returncode  # fmt: skip
    text = out.read_text()
    assert code == 0, text
    assert "Redis bytes per checkpoint" in text
    assert "4-node StateGraph" in text
    figures = json.loads(figures_path.read_text())
    assert figures["sizes"] == [10, 100]
    assert set(figures["savers"]) == set(SAVERS)  # no saver skipped
    for name, per in figures["savers"].items():
        for size in ("10", "100"):
            for op in ("put", "put_writes", "get_tuple", "list"):
                assert per[size][op]["n"] > 0, (name, size, op)
            if name in ("SidecarSaver", "plainredis", "aws ValkeySaver"):
                assert per[size]["bytes_per_checkpoint"] > 0, (name, size)
        assert per["graph"]["n"] > 0
    assert figures["spans_exported"] > 0  # SidecarSaver ran with the SDK tracing
    assert set(figures["verdict"]["fastest_at_largest"]) == {
        "put",
        "put_writes",
        "get_tuple",
        "list",
    }
