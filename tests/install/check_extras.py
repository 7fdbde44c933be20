"""Every CLI command works after installing exactly the extras the README names for it.

For each line of :data:`extras.INSTALL_LINES`: a fresh virtualenv, ``pip install`` of this
project's wheel with exactly those extras (pip's cache keeps it quick), then each command. The
wheel is built once. Exits 1 on the first command that fails, printing its output.

    python tests/install/check_extras.py [--keep DIR]
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from extras import INSTALL_LINES, MUST_FAIL

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("SIDECAR_", "PROMETHEUS_", "OTEL_", "PYTHON", "VIRTUAL_ENV"))
}
ENV["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"


def sh(*cmd: str | Path, cwd: Path | None = None, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=ENV, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(
            f"FAILED ({done.returncode}): {' '.join(map(str, cmd))}\n{done.stdout}{done.stderr}"
        )
    return done.stdout


def build_wheel(out: Path) -> Path:
    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, ROOT)
    (wheel,) = out.glob("checkpoint_sidecar-*.whl")
    return wheel


def venv_with(line: str, wheel: Path, where: Path) -> Path:
    sh(sys.executable, "-m", "venv", where)
    requirement = str(wheel) + line.removeprefix("checkpoint-sidecar")
    sh(where / "bin" / "python", "-m", "pip", "install", "-q", requirement)
    return where / "bin"


def check_serve(binary: Path, args: list[str], cwd: Path) -> None:
    log = cwd / "serve.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, *args], cwd=cwd, env=ENV, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            for text in log.read_text(errors="replace").splitlines():
                if text.startswith("serving http://"):
                    url = text.split()[1].removesuffix("/metrics")
            time.sleep(0.2)
        if url is None:
            raise SystemExit(f"FAILED: {binary} {' '.join(args)} never served\n{log.read_text()}")
        with urllib.request.urlopen(url + "/healthz", timeout=10) as answer:
            assert answer.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    if code != 0:
        raise SystemExit(f"FAILED: serve exited {code} on SIGTERM\n{log.read_text()}")


def run(bin_dir: Path, command: list[str], cwd: Path) -> None:
    if command[0] == "python":
        sh(bin_dir / "python", *command[1:], cwd=cwd)
    elif command[0] == "serve" and "--help" not in command:
        check_serve(bin_dir / "checkpoint-sidecar", command, cwd)
    else:
        output = sh(bin_dir / "checkpoint-sidecar", *command, cwd=cwd, timeout=300)
        if "--out" in command and command[command.index("--out") + 1] == "-":
            assert output.strip(), f"{command}: nothing on stdout"


def check_must_fail(bin_dir: Path, cwd: Path) -> None:
    line, command, extra = MUST_FAIL
    done = subprocess.run(
        [bin_dir / "checkpoint-sidecar", *command], cwd=cwd, env=ENV, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    if done.returncode == 0 or extra not in done.stderr or "Traceback" in done.stderr:
        raise SystemExit(
            f"FAILED: with only `pip install {line}`, `{' '.join(command)}` should fail in one "
            f"line naming {extra}; got {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    print(f"  ok (fails as it should, naming {extra}): {' '.join(command)}")


def main() -> int:
    keep = sys.argv[sys.argv.index("--keep") + 1] if "--keep" in sys.argv else None
    base = Path(keep or tempfile.mkdtemp(prefix="extras-check-"))
    base.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        wheel = build_wheel(base / "wheel")
        for i, (line, commands) in enumerate(INSTALL_LINES.items()):
            cwd = base / f"work{i}"
            cwd.mkdir(exist_ok=True)
            t = time.monotonic()
            bin_dir = venv_with(line, wheel, base / f"venv{i}")
            print(f"pip install '{line}'  ({time.monotonic() - t:.0f} s)")
            if line == MUST_FAIL[0]:
                check_must_fail(bin_dir, cwd)
            for command in commands:
                run(bin_dir, command, cwd)
                print(f"  ok: {' '.join(command)}")
    finally:
        if keep is None:
            shutil.rmtree(base, ignore_errors=True)
    print(f"every documented install line works ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
