"""The command line as an operator meets it: the library's SIDECAR_* settings, one name per
flag, ``--out -``, and defaults in every ``--help``."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sidecar.server.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, tmp_path: Path, **env: str) -> tuple[int, str, str]:
    out, err = tmp_path / "out", tmp_path / "err"
    clean = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SIDECAR_")}
    clean["PYTHONPATH"] = str(ROOT)
    with out.open("wb") as o, err.open("wb") as e:
        code = subprocess.run(
            [sys.executable, "-m", "sidecar", *args], stdout=o, stderr=e,
            stdin=subprocess.DEVNULL, env={**clean, **env}, cwd=tmp_path, timeout=120, check=False,
        ).returncode  # fmt: skip
    return code, out.read_text(), err.read_text()


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize("command", ["serve", "dashboards", "alerts", "demo"])
def test_every_help_shows_every_default(command: str) -> None:
    sub = _subparsers()[command]
    formatter = sub._get_formatter()
    checked = 0
    for action in sub._actions:
        if not action.option_strings or action.default in (
            None,
            False,
            True,
            [],
            argparse.SUPPRESS,
        ):
            continue  # nothing to show: an optional flag or a switch
        shown = formatter._get_help_string(action) or ""
        assert "default" in shown.lower(), f"{command} {action.option_strings[-1]}: {shown!r}"
        checked += 1
    assert checked >= 2
    assert "default" in " ".join(sub.format_help().split())


def test_a_flag_means_the_same_in_every_subcommand() -> None:
    seen: dict[str, tuple[str, str]] = {}
    for command, sub in _subparsers().items():
        for action in sub._actions:
            for flag in action.option_strings:
                if flag in ("-h", "--help"):
                    continue
                meaning = (action.dest, type(action).__name__)
                if flag in seen:
                    assert seen[flag][1] == meaning, f"{flag}: {command} vs {seen[flag][0]}"
                seen[flag] = (command, meaning)  # type: ignore[assignment]
    # one name per meaning: the sidecar's HTTP port is --port wherever it is set
    assert "--port" in _subparsers()["serve"].format_help()
    assert "--port" in _subparsers()["demo"].format_help()


def test_alerts_to_stdout_with_the_budget_from_the_environment(tmp_path: Path) -> None:
    code, out, err = cli("alerts", "--out", "-", tmp_path=tmp_path, SIDECAR_BUDGET_MS="250")
    assert code == 0, err
    rules = yaml.safe_load(out)
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert any('le="0.25"' in e for e in exprs)
    assert not any('le="0.1"' in e for e in exprs)
    assert "250 ms" in out.splitlines()[1]
    assert sorted(tmp_path.iterdir()) == [tmp_path / "err", tmp_path / "out"]  # no file written


def test_the_flag_wins_over_the_environment(tmp_path: Path) -> None:
    code, out, _ = cli(
        "alerts", "--out", "-", "--budget-ms", "50", tmp_path=tmp_path, SIDECAR_BUDGET_MS="250"
    )
    assert code == 0
    assert 'le="0.05"' in out and 'le="0.25"' not in out


def test_a_bad_setting_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    code, out, err = cli("alerts", "--out", "-", tmp_path=tmp_path, SIDECAR_BUDGET_MS="-5")
    assert code == 1 and out == ""
    assert err.splitlines() == [
        "checkpoint-sidecar alerts: error: invalid SIDECAR_BUDGET_MS: "
        "Input should be greater than 0"
    ]


def test_prometheus_rule_to_stdout(tmp_path: Path) -> None:
    code, out, err = cli(
        "alerts", "--format", "prometheusrule", "--out", "-", "--label", "release=kps",
        "--namespace", "agents", tmp_path=tmp_path, SIDECAR_BUDGET_MS="250",
    )  # fmt: skip
    assert code == 0, err
    resource = yaml.safe_load(out)
    assert resource["kind"] == "PrometheusRule"
    assert resource["metadata"]["labels"]["release"] == "kps"
    assert resource["metadata"]["namespace"] == "agents"
    assert 'le="0.25"' in out


def test_dashboards_to_stdout_with_the_budget_from_the_environment(tmp_path: Path) -> None:
    code, out, err = cli(
        "dashboards", "--out", "-", "--only", "checkpoint-overview", tmp_path=tmp_path,
        SIDECAR_BUDGET_MS="250",
    )  # fmt: skip
    assert code == 0, err
    dashboard = json.loads(out)
    assert dashboard["uid"]
    assert "0.25" in out
    code, out, err = cli("dashboards", "--out", "-", tmp_path=tmp_path)
    assert code == 0, err
    assert sorted(json.loads(out)) == ["checkpoint-overview", "checkpoint-sidecar-health"]
    code, _, err = cli("dashboards", "--out", "-", "--only", "nope", tmp_path=tmp_path)
    assert code == 1 and "checkpoint-overview" in err


def test_demo_reads_the_budget_setting_too(tmp_path: Path) -> None:
    code, _, err = cli("demo", "--runs", "1", tmp_path=tmp_path, SIDECAR_BUDGET_MS="0")
    assert code == 1
    assert "invalid SIDECAR_BUDGET_MS" in err
