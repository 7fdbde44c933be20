"""Draw the README picture: the overview dashboard's main panels, from a real Prometheus that
scraped a real demo workload for about a minute.

    python bench/render_overview.py [--out docs/img/checkpoint-overview.png] [--runs 500]

Starts ``checkpoint-sidecar demo`` (embedded Valkey, in-process sidecar, a Redis freeze for the
breaker to show) with ``--keep-serving`` on a free port, Debian's Prometheus scraping it every
second (exemplar storage on, the generated rules loaded), waits for the workload to finish,
then renders with ``checkpoint-sidecar dashboards --render``. Needs ``prometheus`` on PATH.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar.server.embedded import free_port  # noqa: E402
from tests.e2e.prom import running_prometheus  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "checkpoint-overview.png")
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--tail-s", type=float, default=4.0, help="quiet time after the workload")
    args = p.parse_args()
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        sys.exit("prometheus not found: apt-get install prometheus")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="render-overview-") as tmp:
        work = Path(tmp)
        demo_log = (work / "demo.log").open("wb")
        demo = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "demo", "--plain", "--keep-serving",
             "--runs", str(args.runs), "--concurrency", str(args.concurrency),
             "--slow-redis", "2", "--metrics-port", str(port), "--abandon-ttl", "3",
             "--json", str(work / "summary.json")],
            stdout=demo_log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        rules = ROOT / "alerts" / "checkpoint-rules.yml"
        try:
            with running_prometheus(prometheus, work, [f"127.0.0.1:{port}"], rules) as prom:
                started = time.monotonic()
                while not (work / "summary.json").exists():  # written when the workload ends
                    if demo.poll() is not None:
                        sys.exit(f"demo exited early: {(work / 'demo.log').read_text()[-2000:]}")
                    time.sleep(0.5)
                time.sleep(args.tail_s)
                window = int(time.monotonic() - started) + 5
                httpx.get(f"{prom.url}/-/ready", timeout=2).raise_for_status()
                subprocess.run(
                    [sys.executable, "-m", "sidecar", "dashboards", "--out", str(work / "dash"),
                     "--render", str(args.out), "--prometheus-url", prom.url,
                     "--render-window", str(window)],
                    check=True, cwd=ROOT,
                )  # fmt: skip
        finally:
            demo.send_signal(signal.SIGINT)
            demo.wait(10)
            demo_log.close()
    print(f"{args.out} ({window} s of data)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
