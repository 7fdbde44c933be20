"""Smoke tests: each benchmark runs with ``--quick``, exits 0 and prints its tables.

Timings are never asserted (they are figures, not pass/fail); structural results are: the
library loses no progress entry, every figure is present, the JSON is written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run_bench(script: str, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    out, figures = tmp_path / f"{script}.out", tmp_path / f"{script}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "OTEL_"))}
    with out.open("wb") as sink:  # a file, never an unread PIPE
        code = subprocess.run(
            [sys.executable, str(BENCH / script), "--quick", "--json", str(figures)],
            stdout=sink, stderr=subprocess.STDOUT, env=env, timeout=110, check=False,
        ).returncode  # fmt: skip
    text = out.read_text()
    assert code == 0, text
    data: dict[str, Any] = json.loads(figures.read_text())
    return text, data


def test_overhead_quick(tmp_path: Path) -> None:
    text, data = run_bench("overhead.py", tmp_path)
    assert "Library vs bare redis-py" in text
    assert "targets" in text
    for op in ("save_section", "load_all_sections"):
        assert data[op]["library"]["n"] == data["iterations"]
        assert data[op]["ratio_p50"] > 0
    assert data["spans_exported"] > 0  # the SDK really ran


@pytest.mark.timeout(120)
def test_compare_naive_quick(tmp_path: Path) -> None:
    text, data = run_bench("compare_naive.py", tmp_path)
    assert "Naive (seed) vs library" in text
    assert "Lost progress entries" in text
    assert data["sizes"] == [0, 100_000]
    assert data["100000"]["keys"] >= 100_000
    assert data["lost"]["library"]["lost_entries"] == 0
    assert data["lost"]["naive"]["lost_entries"] > 0  # an observation the table reports
    assert sum(data["library_non_ok"].values()) == 0


def test_throughput_quick(tmp_path: Path) -> None:
    text, data = run_bench("throughput.py", tmp_path)
    assert "Throughput, one process" in text
    assert "Redis memory per run" in text
    assert data["throughput"]["OTel SDK"]["saves_per_s"] > 0
    assert data["memory"]["library_memory_usage_bytes"] > data["memory"]["payload_bytes"]
    assert data["sidecar"]["rss_after_mib"] > 0
    assert data["sidecar"]["expiries_counted"] == data["sidecar"]["expiring_runs"]


def test_steps_quick(tmp_path: Path) -> None:
    text, data = run_bench("steps.py", tmp_path)
    assert "Steps/s" in text
    for concurrency in (1, 32):
        figures = data[f"concurrency_{concurrency}"]
        assert figures["one_round_trip_steps_per_s"] > 0
        assert figures["two_round_trips_steps_per_s"] > 0
    assert data["spans_exported"] > 0


def test_storage_quick(tmp_path: Path) -> None:
    text, data = run_bench("storage.py", tmp_path)
    assert "Redis bytes per run" in text
    forms = ("plain", "zstd", "deflate", "aes-gcm", "zstd+aes-gcm", "deflate+aes-gcm")
    for size in ("2 KB", "20 KB"):
        memory = data["memory_bytes_per_run"][size]
        assert set(memory) == set(forms)
        assert memory["zstd"] < memory["plain"]  # real text compresses (exact, not a timing)
        assert memory["deflate"] < memory["plain"]
        assert set(data["library_p50"][size]) == set(forms)
    for variant in ("min_replicas=0", "min_replicas=1", "min_local_fsync (everysec)"):
        assert data["replicated_saves"][variant]["save_p50_s"] > 0
    assert data["replicated_saves"]["min_replicas=1"]["confirmed_share"] == 1.0
    assert {"zstd 1", "deflate 0"} <= set(data["codec_levels_20kb"])
