"""Helpers of the sidecar-process tests: the sidecar as a real subprocess on a free port.

Every test talks to a private ``valkey-server`` (``private_server`` from the shared conftest)
and starts ``python -m sidecar serve`` with ``--port 0``; the bound URL is read from its stdout.
Subprocess output goes to files (a PIPE nobody reads blocks at 64 KiB).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from sidecar.server.embedded import stop_process

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def clean_env(**extra: str) -> dict[str, str]:
    """The test environment without SIDECAR_* / PROMETHEUS_* / OTEL_* leaking in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SIDECAR_", "PROMETHEUS_", "prometheus_", "OTEL_"))
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env["SIDECAR_API_PORT"] = "0"  # the HTTP API on a free port, never a fixed 9465 in tests
    env.update(extra)
    return env


def wait_until(check: Callable[[], T], what: str, timeout: float = 20.0) -> T:
    """Poll ``check`` until it returns something truthy; fail after a generous timeout."""
    deadline = time.monotonic() + timeout
    last: T = check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what} (last: {last!r})"
            )
        time.sleep(0.05)
        last = check()
    return last


def http_get(url: str, accept: str | None = None) -> tuple[int, bytes, str]:
    """(status, body, content type) of a GET; HTTP errors are answers, not exceptions."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read(), exc.headers.get("Content-Type", "")


class SidecarProcess:
    """``python -m sidecar <args>`` as a child process, output in files under ``workdir``."""

    def __init__(self, args: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.stdout_path = workdir / f"sidecar-{id(self)}.out"
        self.stderr_path = workdir / f"sidecar-{id(self)}.err"
        self.env = env or clean_env()
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    def start(self) -> SidecarProcess:
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sidecar", *self.args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=ROOT,
            )
        return self

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_serving(self, timeout: float = 30.0) -> SidecarProcess:
        """Wait for the 'serving http://...' line; fail early if the process exits."""

        def serving() -> str | None:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"sidecar exited with {self.process.returncode}: {self.stderr[-2000:]}"
                )
            for line in self.stdout.splitlines():
                if line.startswith("serving http://"):
                    return line.split()[1].removesuffix("/metrics")
            return None

        self.base_url = wait_until(serving, "the sidecar to serve", timeout)
        return self

    def get(self, path: str, accept: str | None = None) -> tuple[int, bytes, str]:
        return http_get(self.base_url + path, accept)

    def readyz(self) -> tuple[int, dict[str, Any]]:
        status, body, _ = self.get("/readyz")
        return status, json.loads(body)

    def samples(self) -> dict[str, float]:
        """Every sample on /metrics as ``name{labels}`` -> value (labels sorted)."""
        status, body, _ = self.get("/metrics")
        assert status == 200, body
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                found[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return found

    def metric(self, name: str) -> float | None:
        return self.samples().get(name)

    def signal(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGTERM first (so an embedded server is stopped too), SIGKILL if that hangs."""
        if self.process is not None:
            stop_process(self.process)


def serve_args(redis_url: str, prefix: str, *extra: str) -> list[str]:
    return ["serve", "--redis-url", redis_url, "--key-prefix", prefix, "--port", "0", *extra]


AGENT = Path(__file__).with_name("agent_proc.py")


def start_agent(
    url: str, prefix: str, mode: str, count: int, workdir: Path, **env: str
) -> subprocess.Popen[bytes]:
    """A real agent process (see ``agent_proc.py``); output in files under ``workdir``."""
    name = f"agent-{mode}-{time.monotonic_ns()}"
    with (workdir / f"{name}.out").open("wb") as out, (workdir / f"{name}.err").open("wb") as err:
        return subprocess.Popen(
            [sys.executable, str(AGENT), url, prefix, mode, str(count)],
            stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=clean_env(**env), cwd=ROOT,
        )  # fmt: skip


def run_agent(url: str, prefix: str, mode: str, count: int, workdir: Path, **env: str) -> None:
    proc = start_agent(url, prefix, mode, count, workdir, **env)
    code = proc.wait(60)
    assert code == 0, f"agent {mode} exited with {code}; see {workdir}"
