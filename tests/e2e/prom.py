"""A real Prometheus (Debian's 2.42 ``prometheus`` binary) for end-to-end tests.

Started on a free loopback port with a private TSDB directory, the rule file under test, a
1-second scrape of the given targets, and exemplar storage on. Output goes to a file (a PIPE
nobody reads would block the process once full).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from sidecar.server.embedded import free_port, stop_process


class PrometheusProcess:
    def __init__(self, binary: str, workdir: Path, targets: list[str], rule_file: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(rule_file)],
            "scrape_configs": [
                {"job_name": "checkpoint", "static_configs": [{"targets": targets}]},
            ],
        }
        self.log_path = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> PrometheusProcess:
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config), encoding="utf-8")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--enable-feature=exemplar-storage",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus not ready in {timeout}s: {self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@contextlib.contextmanager
def running_prometheus(
    binary: str, workdir: Path, targets: list[str], rule_file: Path
) -> Iterator[PrometheusProcess]:
    prom = PrometheusProcess(binary, workdir, targets, rule_file).start()
    try:
        yield prom
    finally:
        prom.stop()


async def api(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    """``data`` of a Prometheus API answer; an error answer fails with Prometheus' message."""
    response = await client.get(path, params=params)
    body = response.json()
    assert body.get("status") == "success", f"{path} {params}: {body.get('error')}"
    return body["data"]
