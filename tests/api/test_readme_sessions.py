"""The README's "For agents in other languages" runs as written: its curl session with the real
``curl`` and its Node example with the real ``node``, against a real sidecar process over a
private Valkey.

The curl session is a transcript: each ``$ `` line is run (the README's URL swapped for the
test sidecar's), the status in its comment and the answer printed under it must be what the API
answers (``…`` stands for any text; the owner and fence the README shows are replaced by the
ones the acquire returned). Without curl or node on PATH these are skipped locally and fail
under ``CI=true``, as the other test tools.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from server.helpers import ROOT, SidecarProcess

from sidecar.server.embedded import EmbeddedServer

from .test_node_client import CLIENT, _node, _sidecar

CURL = shutil.which("curl")
BASH = shutil.which("bash")
README = ROOT / "README.md"
README_URL = "http://127.0.0.1:9465"
RUN_PATH = "/v1/runs/user-42/report-1"
Factory = Callable[..., SidecarProcess]


def _blocks() -> dict[str, str]:
    """The fenced blocks of the README's "For agents in other languages", by language."""
    text = README.read_text("utf-8")
    section = text.split("### For agents in other languages", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^```(\w+)\n(.*?)^```", section, re.S | re.M))


def _need(tool: str | None, name: str) -> str:
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required under CI=true")
        pytest.skip(f"{name} is not installed")
    return tool


def _pattern(shown: str, owner: str, fence: str) -> str:
    """A regex of an answer the README shows: its owner and fence captured, ``…`` any text."""
    pattern = re.escape(shown).replace("…", ".*?")
    pattern = pattern.replace(re.escape(owner), "(?P<owner>[0-9a-f]{32})", 1)
    return pattern.replace(re.escape(fence), r"(?P<fence>\d+)", 1)


def test_the_readme_curl_session_runs_as_written(
    private_server: EmbeddedServer, sidecar_factory: Factory
) -> None:
    bash, _ = _need(BASH, "bash"), _need(CURL, "curl")
    url = _sidecar(private_server, sidecar_factory)
    steps: list[tuple[str, list[str]]] = []
    for line in _blocks()["console"].splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    acquire = next(shown[0] for command, shown in steps if "/lease -d" in command)
    readme_lease = json.loads(acquire)
    readme_owner, readme_fence = readme_lease["owner"], str(readme_lease["fencing_token"])
    swaps = {README_URL: url}
    assignments: list[str] = []  # R=..., L=(...): carried into every later command
    answered = []
    for step, shown in steps:
        for old, new in swaps.items():
            step = step.replace(old, new)
        command, _, comment = step.partition("  #")
        if not command.lstrip().startswith("curl "):
            assignments.append(command.strip())
            continue
        status = re.match(r"\s*(\d{3})\b", comment)
        assert status, f"the README gives no status for: {command}"
        script = "; ".join([*assignments, f"{command.strip()} -w '\\n%{{http_code}}'"])
        done = subprocess.run(
            [bash, "-c", script], capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0, done.stderr
        body, _, code = done.stdout.rpartition("\n")
        assert int(code) == int(status.group(1)), f"{command}: {code} {body}"
        if shown:
            match = re.fullmatch(_pattern("\n".join(shown), readme_owner, readme_fence), body)
            assert match, f"{command}: answered {body}, the README shows {shown}"
            if "owner" in match.groupdict():
                swaps[readme_owner] = match["owner"]
                swaps[readme_fence] = match["fence"]
        else:
            assert body == "", f"{command}: answered {body}, the README shows nothing"
        answered.append(int(code))
    assert answered == [201, 204, 200, 204]
    assert readme_owner in swaps and readme_fence in swaps  # later calls used the real lease
    assert httpx.get(f"{url}{RUN_PATH}", timeout=10).status_code == 404  # completed: deleted


def test_the_readme_node_example_runs(
    private_server: EmbeddedServer, sidecar_factory: Factory, tmp_path: Path
) -> None:
    url = _sidecar(private_server, sidecar_factory)
    saved = httpx.put(f"{url}{RUN_PATH}/sections/summary", json={"text": "s"}, timeout=10)
    assert saved.status_code == 204  # an earlier attempt finished the summary, then died
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules" / "checkpoint-sidecar-client").symlink_to(CLIENT)
    script = tmp_path / "readme.mjs"
    script.write_text(
        "const SECTIONS = ['summary', 'data_analysis', 'recommendations', 'action_items'];\n"
        "const calls = [];\n"
        "const llm = async (name) => { calls.push(name); return { text: name }; };\n"
        + _blocks()["js"]
        + "console.log(JSON.stringify(calls));\n"
    )
    code, out = _node([str(script)], url, tmp_path)
    assert code == 0, out
    assert json.loads(out.splitlines()[-1]) == ["data_analysis", "recommendations", "action_items"]
    assert httpx.get(f"{url}{RUN_PATH}", timeout=10).status_code == 404  # completed: deleted
