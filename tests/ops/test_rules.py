"""The generated Prometheus rules: committed file up to date, valid, tested, honest."""

from __future__ import annotations

import pathlib
import re
import subprocess

import pytest
import yaml

from sidecar import names
from sidecar.ops import generate_rules
from sidecar.ops.promql import le_label
from sidecar.ops.rules import RUNBOOK_BASE_URL, RUNBOOK_URL, alerts, rules_document

RULES = pathlib.Path("alerts") / "checkpoint-rules.yml"
EXPECTED_ALERTS = {
    "CheckpointLatencyBudgetBurnFast": "critical",
    "CheckpointLatencyBudgetBurnSlow": "critical",
    "CheckpointLatencyBudgetBurnTicket": "warning",
    "CheckpointRedisUnavailable": "critical",
    "CheckpointErrorsHigh": "warning",
    "CheckpointCircuitOpen": "warning",
    "CheckpointTTLExpiriesHigh": "warning",
    "CheckpointResumeRateHigh": "warning",
    # losing the sidecar loses observability only: agents keep checkpointing
    "CheckpointSidecarDown": "warning",
    "CheckpointExpiryWatcherDown": "warning",
    "CheckpointExpiriesNotCounted": "warning",
}
# Alerts about one scraped target (their descriptions name the pod); the others sum a job.
PER_TARGET_ALERTS = {
    "CheckpointCircuitOpen",
    "CheckpointSidecarDown",
    "CheckpointExpiryWatcherDown",
}
RATIO_ALERTS = {
    "CheckpointErrorsHigh",
    "CheckpointTTLExpiriesHigh",
    "CheckpointResumeRateHigh",
}
_KNOWN_METRICS = {
    value for key, value in vars(names).items() if key.isupper() and isinstance(value, str)
}


def _run(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def _rules(doc: dict[str, object]) -> list[dict[str, object]]:
    groups = doc["groups"]
    assert isinstance(groups, list)
    return [rule for group in groups for rule in group["rules"]]


def test_committed_rules_equal_generated(repo: pathlib.Path, tmp_path: pathlib.Path) -> None:
    fresh = generate_rules(tmp_path / "rules.yml")
    committed = (repo / RULES).read_text(encoding="utf-8")
    assert committed == fresh.read_text(encoding="utf-8"), (
        "alerts/checkpoint-rules.yml is stale: run `python -m sidecar.ops --out-dir .`"
    )


def test_promtool_check_rules(repo: pathlib.Path, promtool: str) -> None:
    result = _run(promtool, "check", "rules", str(RULES), cwd=repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 23 rules found" in result.stdout


def test_promtool_unit_tests(repo: pathlib.Path, promtool: str) -> None:
    tests = sorted(str(p.relative_to(repo)) for p in (repo / "alerts" / "tests").glob("*.yml"))
    assert len(tests) >= 6
    result = _run(promtool, "test", "rules", *tests, cwd=repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(tests)


def test_every_alert_has_a_quiet_and_a_firing_case(repo: pathlib.Path) -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in (repo / "alerts" / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fires >= set(EXPECTED_ALERTS), set(EXPECTED_ALERTS) - fires
    assert quiet >= set(EXPECTED_ALERTS), set(EXPECTED_ALERTS) - quiet


@pytest.mark.parametrize(("budget_ms", "slo"), [(250.0, 0.995), (33.3, 0.9)])
def test_other_budget_regenerates_valid_rules(
    budget_ms: float, slo: float, tmp_path: pathlib.Path, promtool: str
) -> None:
    path = generate_rules(tmp_path / "rules.yml", budget_ms=budget_ms, slo=slo)
    text = path.read_text(encoding="utf-8")
    budget_s = budget_ms / 1000
    edge = le_label(budget_s)
    assert round(budget_s, 9) in names.latency_buckets(budget_s)
    assert text.count(f'le="{edge}"') == 6  # one per SLI window, one for the 30-day SLO record
    assert 'le="0.1"' not in text
    assert f"/ {1 - slo:.3g} >" in text
    result = _run(promtool, "check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def _runbook_sections(repo: pathlib.Path) -> dict[str, list[str]]:
    """Anchor of each ``##`` heading of docs/runbooks.md -> the lines of its section."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in (repo / "docs" / "runbooks.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            anchor = re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            current = sections.setdefault(anchor, [])
        else:
            current.append(line)
    return sections


def test_alert_names_labels_and_annotations(repo: pathlib.Path) -> None:
    doc = yaml.safe_load((repo / RULES).read_text(encoding="utf-8"))
    rules = [r for r in _rules(doc) if "alert" in r]
    assert {r["alert"]: r["labels"]["severity"] for r in rules} == EXPECTED_ALERTS
    anchors = set(_runbook_sections(repo))
    for rule in rules:
        notes = rule["annotations"]
        assert set(notes) == {"summary", "description", "runbook_url"}
        assert "$value | humanize" in notes["description"], rule["alert"]
        url, _, anchor = notes["runbook_url"].partition("#")
        assert url == RUNBOOK_URL  # the documented default unless --runbook-url says
        assert anchor in anchors, f"docs/runbooks.md has no heading for {rule['alert']}"
    hosted = rules_document(runbook_url="https://runbooks.example/checkpoint.md")
    for rule in (r for r in _rules(hosted) if "alert" in r):
        url = rule["annotations"]["runbook_url"]
        assert url == f"https://runbooks.example/checkpoint.md#{rule['alert'].lower()}"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (RUNBOOK_URL, RUNBOOK_URL),
        ("https://wiki.example/ops/checkpoint", "https://wiki.example/ops/checkpoint"),
        ("http://10.0.0.9/runbooks.md", "http://10.0.0.9/runbooks.md"),
        ("docs/runbooks.md", RUNBOOK_BASE_URL + "docs/runbooks.md"),  # the CLI's old default
    ],
)
def test_every_runbook_url_is_absolute(given: str, expected: str) -> None:
    """Alertmanager, Slack and PagerDuty show a relative path as dead text."""
    assert RUNBOOK_URL.startswith("https://")
    for rule in (r for r in _rules(rules_document(runbook_url=given)) if "alert" in r):
        url = rule["annotations"]["runbook_url"]
        assert url == f"{expected}#{rule['alert'].lower()}"


def test_every_runbook_starts_with_the_first_command(repo: pathlib.Path) -> None:
    """An operator paged at night reads one line: the command to run first."""
    sections = _runbook_sections(repo)
    for alert in EXPECTED_ALERTS:
        body = [line.strip() for line in sections[alert.lower()] if line.strip()]
        assert body[0] in ("```sh", "```console"), f"{alert}: the runbook must open with a command"
        assert "```" in body[2:], f"{alert}: unterminated command block"
        command = body[1]
        assert command != "```" and not command.startswith("#"), f"{alert}: no command first"


def test_descriptions_name_namespace_and_pod() -> None:
    for rule in (r for r in _rules(rules_document()) if "alert" in r):
        text = rule["annotations"]["description"]
        assert "$labels.namespace" in text and "$labels.job" in text, rule["alert"]
        if rule["alert"] in PER_TARGET_ALERTS:  # the pod, or the instance without Kubernetes
            assert "{{ with $labels.pod }}" in text and "$labels.instance" in text, rule["alert"]


def test_ratio_alerts_have_a_traffic_guard() -> None:
    """A ratio alone pages on one resume out of four runs; each needs a minimum of traffic."""
    by_name = {a.name: a for a in alerts(100.0, 0.99)}
    for name in RATIO_ALERTS:
        alert = by_name[name]
        assert alert.joiner == "and"
        guards = [t for t in alert.terms if "increase(" in t.probe and ">=" in t.comparison]
        assert len(guards) == 1, name
        assert int(guards[0].comparison.split()[-1]) >= 20, name


def test_no_rule_selects_an_operation() -> None:
    """The SLI and every alert count all operations: the manager's verbs and the LangGraph
    saver's ``lg_*`` calls alike (the promtool case "langgraph saver calls burn the budget"
    shows an lg_put series paging)."""
    assert len(names.LANGGRAPH_OPERATIONS) == 8
    for rule in _rules(rules_document()):
        assert "operation=" not in str(rule["expr"]), rule


def test_no_hard_coded_target_and_only_known_metrics() -> None:
    doc = rules_document()
    for rule in _rules(doc):
        expr = str(rule["expr"])
        assert not re.search(r"\b(job|instance)\s*=~?\s*\"", expr), expr
        for metric in re.findall(r"\b((?:checkpoint|sidecar)_[a-z_]+)\b", expr):
            base = re.sub(r"_(bucket|count|sum)$", "", metric)
            assert base in _KNOWN_METRICS, f"{metric} is not a name from sidecar.names"
    assert all(
        a.expr() == next(r["expr"] for r in _rules(doc) if r.get("alert") == a.name)
        for a in alerts(100.0, 0.99)
    )


def test_rejects_nonsense_slo(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="slo"):
        generate_rules(tmp_path / "r.yml", slo=1.5)


@pytest.mark.parametrize("budget_s", [0.1, 0.25, 1.0, 0.0333, 2.5, 0.05])
def test_le_label_matches_prometheus_client(budget_s: float) -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    registry = CollectorRegistry()
    Histogram("h", "h", buckets=names.latency_buckets(budget_s), registry=registry).observe(0)
    assert f'le="{le_label(budget_s)}"' in generate_latest(registry).decode()
