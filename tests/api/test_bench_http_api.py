"""bench/http_api.py --quick runs end to end and reports every figure (timings are figures,
never asserted; the structure and the absence of errors are)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "http_api.py"

if shutil.which("node") is None and os.environ.get("CI") != "true":
    pytest.skip("node is not installed", allow_module_level=True)


@pytest.mark.timeout(180)
def test_http_api_bench_quick(tmp_path: Path) -> None:
    out, figures = tmp_path / "bench.out", tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "OTEL_"))}
    with out.open("wb") as sink:
        code = subprocess.run(
            [sys.executable, str(BENCH), "--quick", "--json", str(figures)],
            stdout=sink, stderr=subprocess.STDOUT, env=env, timeout=170, check=False,
        ).returncode  # fmt: skip
    text = out.read_text()
    assert code == 0, text[-3000:]
    assert "HTTP API hop" in text and "targets:" in text
    data = json.loads(figures.read_text())
    for verb in ("save", "view"):
        assert data[verb]["n"] == 200
        for part in ("library", "api", "hop", "http_floor"):
            assert set(data[verb][part]) == {"p50_ms", "p90_ms", "p99_ms"}
        assert data[verb]["api"]["p50_ms"] > 0 and data[verb]["library"]["p50_ms"] > 0
        # both Node transports, alternated call by call, each also split by position
        assert set(data[verb]["transports"]) == {"socket", "http"}
        for per in data[verb]["transports"].values():
            assert per["n"] == 200
            for part in ("api", "hop", "http_floor", "hop_first", "hop_second"):
                assert set(per[part]) == {"p50_ms", "p90_ms", "p99_ms"}
        assert data[verb]["api"] == data[verb]["transports"]["socket"]["api"]
    assert data["throughput"]["saves"] > 0
    for kind in ("socket", "http"):
        assert data["throughput_by_transport"][kind]["saves"] > 0
