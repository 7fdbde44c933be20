"""The generated dashboards: up to date, valid against Grafana's schema, following the rules."""

from __future__ import annotations

import json
import pathlib
import re
import runpy
from typing import Any

import jsonschema
import pytest

from sidecar import names
from sidecar.ops import generate_dashboards
from sidecar.ops.dashboards import dashboards_json, render, to_grafana_json
from tests.ops.sdk_schema import dashboard_schema

STEMS = ("checkpoint-overview", "checkpoint-sidecar-health")
UNITS = {"s", "bytes", "percentunit", "ops", "short", "none"}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = dashboard_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def committed(repo: pathlib.Path) -> dict[str, dict[str, Any]]:
    return {
        stem: json.loads((repo / "dashboards" / f"{stem}.json").read_text(encoding="utf-8"))
        for stem in STEMS
    }


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_committed_json_equals_generated(repo: pathlib.Path, tmp_path: pathlib.Path) -> None:
    written = generate_dashboards(tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{s}.json" for s in STEMS)
    for path in written:
        committed = (repo / "dashboards" / path.name).read_text(encoding="utf-8")
        assert committed == path.read_text(encoding="utf-8"), (
            f"dashboards/{path.name} is stale: run `python -m sidecar.ops --out-dir .`"
        )


def test_dashboard_sources_follow_grafanalib_convention(repo: pathlib.Path) -> None:
    for stem in STEMS:
        source = repo / "dashboards" / f"{stem}.dashboard.py"
        built = runpy.run_path(str(source))["dashboard"]
        assert render(to_grafana_json(built)) == (repo / "dashboards" / f"{stem}.json").read_text(
            encoding="utf-8"
        )


@pytest.mark.parametrize("stem", STEMS)
def test_validates_against_grafana_schema(
    stem: str, committed: dict[str, dict[str, Any]], validator: jsonschema.Draft7Validator
) -> None:
    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(committed[stem])
    ]
    assert errors == []


def test_schema_rejects_what_grafanalib_writes(validator: jsonschema.Draft7Validator) -> None:
    """The schema check can fail: grafanalib's raw output (nulls, string datasources) does."""
    from grafanalib._gen import DashboardEncoder

    from sidecar.ops import overview

    raw = json.loads(json.dumps(overview.build(0.1, 0.99).to_json_data(), cls=DashboardEncoder))
    messages = " ".join(e.message for e in validator.iter_errors(raw))
    assert "None is not of type" in messages
    assert "Additional properties are not allowed" in messages


@pytest.mark.parametrize("stem", STEMS)
def test_grafana_conventions(stem: str, committed: dict[str, dict[str, Any]]) -> None:
    board = committed[stem]
    assert board["uid"] == stem
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["label"] == "Data source"
    assert {"job", "instance"} <= set(variables)
    for panel in _panels(board):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["description"], panel["title"]
        if panel["type"] not in ("state-timeline",):
            assert panel["fieldConfig"]["defaults"].get("unit") in UNITS, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'job=~"$job"' in target["expr"], target["expr"]
            assert 'instance=~"$instance"' in target["expr"], target["expr"]
    text = json.dumps(board)
    assert "null" not in text
    uids = set(re.findall(r'"uid": "([^"]*)"', text))
    assert uids == {stem, "${datasource}"}, "hard-coded datasource UID"


def test_overview_panels(committed: dict[str, dict[str, Any]]) -> None:
    board = committed["checkpoint-overview"]
    by_title = {p["title"]: p for p in _panels(board)}
    latency = by_title["Latency p50 / p95 / p99 by operation"]
    exprs = [t["expr"] for t in latency["targets"]]
    assert any(names.BUDGET_SECONDS in e for e in exprs), "budget line must read the gauge"
    assert "0.1" not in " ".join(exprs), "the budget is read, not typed"
    heatmap = next(p for p in _panels(board) if p["type"] == "heatmap")
    assert heatmap["options"]["calculate"] is False
    assert heatmap["options"]["exemplars"]["color"]
    assert all(t["format"] == "heatmap" and t["exemplar"] for t in heatmap["targets"])
    assert {"cards", "dataFormat", "yAxis", "xAxis"}.isdisjoint(heatmap)  # pre-9.1 keys
    used = " ".join(t["expr"] for p in _panels(board) for t in p["targets"])
    for metric in (
        names.OPERATION_DURATION, names.BUDGET_EXCEEDED, names.BUDGET_SECONDS,
        names.SECTION_BYTES, names.RUNS_STARTED, names.RUNS_FINISHED, names.SECTIONS,
        names.CIRCUIT_OPEN, names.TTL_EXPIRIES, names.LEASE_EXPIRIES,
    ):  # fmt: skip
        assert metric in used, f"no panel shows {metric}"


def test_health_panels(committed: dict[str, dict[str, Any]]) -> None:
    used = " ".join(t["expr"] for p in _panels(committed["checkpoint-sidecar-health"])
                    for t in p["targets"])  # fmt: skip
    for metric in (names.REDIS_UP, names.WATCHER_UP, names.WATCHER_RECONNECTS, "up{",
                   "process_cpu_seconds_total", "process_resident_memory_bytes",
                   "process_open_fds"):  # fmt: skip
        assert metric in used


@pytest.mark.parametrize(("budget_ms", "edge"), [(250.0, "0.25"), (40.0, "0.04")])
def test_other_budget(budget_ms: float, edge: str, validator: jsonschema.Draft7Validator) -> None:
    board = dashboards_json(budget_ms, 0.995)["checkpoint-overview"]
    assert not list(validator.iter_errors(board))
    text = json.dumps(board)
    assert f'le=\\"{edge}\\"' in text
    assert 'le=\\"0.1\\"' not in text
    assert "99.5%" in text


def test_module_command_regenerates_everything(repo: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """``python -m sidecar.ops --out-dir DIR`` (the documented command) writes both artefacts."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "sidecar.ops", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False, cwd=repo,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for rel in ("dashboards/checkpoint-overview.json", "dashboards/checkpoint-sidecar-health.json",
                "alerts/checkpoint-rules.yml"):  # fmt: skip
        assert (tmp_path / rel).read_text(encoding="utf-8") == (repo / rel).read_text(
            encoding="utf-8"
        )
    bad = subprocess.run(
        [sys.executable, "-m", "sidecar.ops", "--out-dir", str(tmp_path), "--slo", "2"],
        capture_output=True, text=True, timeout=60, check=False, cwd=repo,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "--slo" in bad.stderr


def test_accepts_string_paths(tmp_path: pathlib.Path) -> None:
    from sidecar.ops import generate_rules

    assert len(generate_dashboards(str(tmp_path / "d"))) == 2
    assert generate_rules(str(tmp_path / "r.yml")).exists()
