"""The generated dashboards: up to date, valid against Grafana's schema, following the rules."""

from __future__ import annotations

import json
import pathlib
import re
import runpy
import subprocess
from typing import Any

import jsonschema
import pytest
import yaml

from sidecar import names
from sidecar.ops import generate_dashboards
from sidecar.ops.dashboards import dashboards_json, render, to_grafana_json
from sidecar.ops.render import grafana_to_promql
from sidecar.ops.rules import (
    FAILED_RECORD,
    FAILED_THRESHOLD,
    RESUMED_RECORD,
    RESUMED_THRESHOLD,
    RUNBOOK_URL,
    SLO_RECORD,
    TTL_EXPIRED_RECORD,
    TTL_EXPIRED_THRESHOLD,
    UNAVAILABLE_RECORD,
    UNAVAILABLE_THRESHOLD,
    alerts,
)
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


_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
_TARGET_MATCHERS = (
    'job=~"$job"',
    'namespace=~"$namespace"',
    'pod=~"$pod"',
    'instance=~"$instance"',
)


def _exprs(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(board) for t in p["targets"]]


@pytest.mark.parametrize("stem", STEMS)
def test_grafana_conventions(stem: str, committed: dict[str, dict[str, Any]]) -> None:
    board = committed[stem]
    assert board["uid"] == stem
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["label"] == "Data source"
    assert list(variables) == ["datasource", "job", "namespace", "pod", "instance"]
    for name in ("job", "namespace", "pod", "instance"):
        assert variables[name]["allValue"] == ".*"  # also matches targets without the label
        assert variables[name]["query"].endswith(f", {name})")
    for panel in _panels(board):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["description"], panel["title"]
        if panel["type"] not in ("state-timeline",):
            assert panel["fieldConfig"]["defaults"].get("unit") in UNITS, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            selectors = _SELECTOR.findall(target["expr"])
            assert selectors, target["expr"]
            for metric, matchers in selectors:
                # a recording rule sums the pods of a job: it is filtered by job and namespace
                wanted = _TARGET_MATCHERS[:2] if ":" in metric else _TARGET_MATCHERS
                for matcher in wanted:
                    assert matcher in matchers, f"{panel['title']}: {metric}{{{matchers}}}"
    text = json.dumps(board)
    assert "null" not in text
    uids = set(re.findall(r'"uid": "([^"]*)"', text))
    assert uids == {stem, "${datasource}"}, "hard-coded datasource UID"


def test_rows_in_reading_order(committed: dict[str, dict[str, Any]]) -> None:
    rows = [p for p in committed["checkpoint-overview"]["panels"] if p["type"] == "row"]
    assert [r["title"] for r in rows] == ["Overview", "Latency", "Outcomes", "Runs", "Sidecar"]
    for stem in STEMS:
        panels = committed[stem]["panels"]
        assert panels[0]["type"] == "row"
        ys = [p["gridPos"]["y"] for p in panels]
        assert ys == sorted(ys), f"{stem}: panels out of reading order"
        cells = {(p["gridPos"]["x"] + dx, p["gridPos"]["y"] + dy) for p in panels
                 for dx in range(p["gridPos"]["w"]) for dy in range(p["gridPos"]["h"])}  # fmt: skip
        area = sum(p["gridPos"]["w"] * p["gridPos"]["h"] for p in panels)
        assert len(cells) == area, f"{stem}: panels overlap"
        assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in panels)


def test_dashboards_link_to_each_other(committed: dict[str, dict[str, Any]]) -> None:
    for stem in STEMS:
        board = committed[stem]
        assert "checkpoint-sidecar" in board["tags"]
        (link,) = board["links"]
        assert link["type"] == "dashboards" and link["tags"] == ["checkpoint-sidecar"]
        assert link["keepTime"] and link["includeVars"]
    other = {"checkpoint-overview": "checkpoint-sidecar-health",
             "checkpoint-sidecar-health": "checkpoint-overview"}  # fmt: skip
    for stem, target in other.items():
        urls = [lk["url"] for p in _panels(committed[stem]) for lk in p.get("links", [])]
        assert any(u.startswith(f"/d/{target}/") for u in urls), f"{stem} -> {target}"


def test_alerting_panels_link_to_their_runbook(committed: dict[str, dict[str, Any]]) -> None:
    linked: set[str] = set()
    for stem in STEMS:
        for panel in _panels(committed[stem]):
            for link in panel.get("links", []):
                url = link["url"]
                if url.startswith("/d/"):
                    continue
                base, _, anchor = url.partition("#")
                assert base == RUNBOOK_URL, url
                assert link["targetBlank"] is True
                linked.add(anchor)
    assert linked == {a.name.lower() for a in alerts(100.0, 0.99)}
    hosted = dashboards_json(runbook_url="https://wiki.example/rb")["checkpoint-overview"]
    assert "https://wiki.example/rb#checkpointredisunavailable" in json.dumps(hosted)


def _by_title(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["title"]: p for p in _panels(board)}


def _threshold(panel: dict[str, Any]) -> float:
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"
    return float(steps[-1]["value"])


def test_alert_panels_plot_the_alerts_records_and_thresholds(
    committed: dict[str, dict[str, Any]],
) -> None:
    by_title = _by_title(committed["checkpoint-overview"])
    for title, record, threshold in (
        ("Resume rate (resumed ÷ started runs, 30 min)", RESUMED_RECORD, RESUMED_THRESHOLD),
        ("TTL expiries per run started (1 h)", TTL_EXPIRED_RECORD, TTL_EXPIRED_THRESHOLD),
        ("Checkpoint calls getting nothing done", UNAVAILABLE_RECORD, UNAVAILABLE_THRESHOLD),
        ("Failed share (error + timeout, 5 min)", FAILED_RECORD, FAILED_THRESHOLD),
    ):
        panel = by_title[title]
        (target,) = panel["targets"]
        assert target["expr"] == f'{record}{{job=~"$job", namespace=~"$namespace"}}'
        assert _threshold(panel) == threshold, title
        rule = next(a for a in alerts(100.0, 0.99) if a.terms[0].probe == record)
        assert rule.terms[0].comparison == f"> {threshold:g}"
    burn = by_title["Latency burn rate (1 h, 6 h)"]
    assert _threshold(burn) == 14.4


def test_slo_figures_come_from_recording_rules(committed: dict[str, dict[str, Any]]) -> None:
    by_title = _by_title(committed["checkpoint-overview"])
    for title in ("Within budget, 30 d (SLO 99%)", "Error budget remaining, 30 d"):
        (target,) = by_title[title]["targets"]
        assert SLO_RECORD in target["expr"]
    for expr in _exprs(committed["checkpoint-overview"]):
        assert not re.search(r"\[(30d|3d|6h)\]", expr), f"raw long window: {expr}"


def test_latency_panel_one_p99_per_operation(committed: dict[str, dict[str, Any]]) -> None:
    latency = _by_title(committed["checkpoint-overview"])["Latency p99 by operation vs budget"]
    p99, budget = (t["expr"] for t in latency["targets"])
    assert p99.startswith("histogram_quantile(0.99, sum by (operation, le) (")
    assert "operation=" not in p99, "every operation, the saver's lg_* calls included"
    assert names.BUDGET_SECONDS in budget
    override = latency["fieldConfig"]["overrides"][0]
    assert override["matcher"]["options"] == latency["targets"][1]["refId"]  # the dashed line
    for expr in _exprs(committed["checkpoint-overview"]):
        if names.OPERATION_DURATION in expr or names.BUDGET_EXCEEDED in expr:
            assert "operation=" not in expr, expr


def test_latency_panel_selects_the_langgraph_saver(
    committed: dict[str, dict[str, Any]], tmp_path: pathlib.Path, promtool: str
) -> None:
    """Asked of promtool: the p99 panel draws one series per operation, lg_put among them."""
    latency = _by_title(committed["checkpoint-overview"])["Latency p99 by operation vs budget"]
    expr = grafana_to_promql(latency["targets"][0]["expr"], "5m")
    labels = 'job="ckpt", namespace="agents", pod="agent-0", instance="10.0.0.1:9464"'
    series = []
    for operation in ("save_section", *names.LANGGRAPH_OPERATIONS[:2]):
        for le, per_minute in (("0.05", 30), ("0.1", 60), ("+Inf", 60)):
            series.append({
                "series": f'{names.OPERATION_DURATION}_bucket{{{labels}, operation="{operation}",'
                          f' outcome="ok", le="{le}"}}',
                "values": f"0+{per_minute}x10",
            })  # fmt: skip
    case = {
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [{
                "expr": f"count by (operation) ({expr})",
                "eval_time": "10m",
                "exp_samples": [
                    {"labels": f'{{operation="{op}"}}', "value": 1}
                    for op in ("save_section", "lg_put", "lg_put_writes")
                ],
            }],
        }],
    }  # fmt: skip
    path = tmp_path / "latency_panel_test.yml"
    path.write_text(yaml.safe_dump(case), encoding="utf-8")
    result = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_panel_promises_exemplars(committed: dict[str, dict[str, Any]]) -> None:
    for stem in STEMS:
        for panel in _panels(committed[stem]):
            assert "exemplar" not in panel["title"].lower(), panel["title"]
    heatmap = _by_title(committed["checkpoint-overview"])["Latency heatmap"]
    assert "multiprocess" in heatmap["description"]
    assert "exemplar-storage" in heatmap["description"]


def test_overview_panels(committed: dict[str, dict[str, Any]]) -> None:
    board = committed["checkpoint-overview"]
    by_title = _by_title(board)
    latency = by_title["Latency p99 by operation vs budget"]
    exprs = [t["expr"] for t in latency["targets"]]
    assert any(names.BUDGET_SECONDS in e for e in exprs), "budget line must read the gauge"
    assert "0.1" not in " ".join(exprs), "the budget is read, not typed"
    heatmap = next(p for p in _panels(board) if p["type"] == "heatmap")
    assert heatmap["options"]["calculate"] is False
    assert heatmap["options"]["exemplars"]["color"]
    assert all(t["format"] == "heatmap" and t["exemplar"] for t in heatmap["targets"])
    assert {"cards", "dataFormat", "yAxis", "xAxis"}.isdisjoint(heatmap)  # pre-9.1 keys
    used = " ".join(_exprs(board))
    for metric in (
        names.OPERATION_DURATION, names.BUDGET_EXCEEDED, names.BUDGET_SECONDS,
        names.SECTION_BYTES, names.RUNS_STARTED, names.RUNS_FINISHED, names.SECTIONS,
        names.CIRCUIT_OPEN, names.TTL_EXPIRIES, names.LEASE_EXPIRIES, names.RUN_EVICTIONS,
        names.SECTION_STORED_BYTES, names.REDIS_UP, names.WATCHER_COUNTING,
    ):  # fmt: skip
        assert metric in used, f"no panel shows {metric}"
    compression = by_title["Compression ratio of saved sections"]["targets"][0]["expr"]
    assert compression.count('operation="save_section"') == 2
    assert compression.index(names.SECTION_BYTES + "_sum") < compression.index(
        names.SECTION_STORED_BYTES + "_sum"
    )


def test_health_panels(committed: dict[str, dict[str, Any]]) -> None:
    used = " ".join(_exprs(committed["checkpoint-sidecar-health"]))
    for metric in (names.REDIS_UP, names.WATCHER_UP, names.WATCHER_RECONNECTS, "up{",
                   names.WATCHER_COUNTING, "process_cpu_seconds_total",
                   "process_resident_memory_bytes", "process_open_fds"):  # fmt: skip
        assert metric in used


@pytest.mark.parametrize(("budget_ms", "edge"), [(250.0, "0.25"), (40.0, "0.04")])
def test_other_budget(budget_ms: float, edge: str, validator: jsonschema.Draft7Validator) -> None:
    board = dashboards_json(budget_ms, 0.995)["checkpoint-overview"]
    assert not list(validator.iter_errors(board))
    text = json.dumps(board)
    # the SLI's le edge lives in the recording rules now; the board names the budget's edge
    assert f"the {edge} s bucket edge is the budget" in text
    assert f"the {budget_ms:g} ms budget" in text
    assert "0.1 s" not in text and "100 ms" not in text
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
