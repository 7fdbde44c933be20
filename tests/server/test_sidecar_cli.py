"""The command line as a real process: help, version, short errors, signals, embedded server."""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from sidecar import names
from sidecar.keys import run_keys
from sidecar.server.embedded import EmbeddedServer, free_port

from .helpers import ROOT, SidecarProcess, clean_env, serve_args, wait_until

Factory = Callable[..., SidecarProcess]


def run_cli(*args: str, tmp_path: Path, timeout: float = 30.0) -> tuple[int, str, str]:
    out, err = tmp_path / "cli.out", tmp_path / "cli.err"
    with out.open("wb") as o, err.open("wb") as e:
        code = subprocess.run(
            [sys.executable, "-m", "sidecar", *args],
            stdout=o, stderr=e, stdin=subprocess.DEVNULL, env=clean_env(), cwd=ROOT,
            timeout=timeout, check=False,
        ).returncode  # fmt: skip
    return code, out.read_text(), err.read_text()


def test_help_explains_every_serve_option(tmp_path: Path) -> None:
    code, out, _ = run_cli("serve", "--help", tmp_path=tmp_path)
    assert code == 0
    for flag in (
        "--redis-url", "--embedded", "--key-prefix", "--host", "--port", "--multiproc-dir",
        "--data-dir", "--embedded-port", "--connect-timeout", "--log-level", "--watcher-slots",
    ):  # fmt: skip
        assert flag in out
    code, out, _ = run_cli("--help", tmp_path=tmp_path)
    assert code == 0
    for command in ("serve", "dashboards", "alerts", "demo"):
        assert command in out


def test_version(tmp_path: Path) -> None:
    code, out, _ = run_cli("--version", tmp_path=tmp_path)
    assert code == 0
    assert re.fullmatch(r"checkpoint-sidecar \d+\.\d+\.\d+\S*\n", out)


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--bogus"],
        ["serve", "--port", "http"],
        ["serve", "--redis-url", "redis://x/0", "--embedded"],
        ["nonsense"],
        [],
    ],
)
def test_bad_flags_give_usage_line_and_one_error_line(args: list[str], tmp_path: Path) -> None:
    code, out, err = run_cli(*args, tmp_path=tmp_path)
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("usage: checkpoint-sidecar")
    assert "error: " in lines[1]
    assert "Traceback" not in err + out


def test_invalid_setting_is_one_line(tmp_path: Path) -> None:
    code, _, err = run_cli(
        "serve", "--redis-url", "redis://127.0.0.1:1/0", "--key-prefix", "a:b", tmp_path=tmp_path
    )
    assert code == 1
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("checkpoint-sidecar serve: error: invalid --key-prefix")


def test_redis_down_at_start_serves_at_once_and_counts_when_it_arrives(
    sidecar_factory: Factory, server_binary: str, tmp_path: Path
) -> None:
    """Redis down never takes the sidecar down: /metrics and /healthz answer at once, the
    outage is on the gauges and in /readyz's body (ready all the same: it gates the agent
    pod), and counting starts when Redis arrives. (It used to wait, then exit 1.)"""
    port = free_port()  # nothing listens there yet
    url = f"redis://127.0.0.1:{port}/0"
    secret_url = f"redis://agent:hunter2-secret@127.0.0.1:{port}/0"
    sc = sidecar_factory(*serve_args(secret_url, "late")).wait_serving(timeout=15)
    assert sc.get("/healthz")[0] == 200
    samples = sc.samples()
    assert samples[names.REDIS_UP] == 0
    assert samples[names.WATCHER_UP] == 0
    assert samples[names.WATCHER_COUNTING] == 0
    status, body = sc.readyz()
    assert status == 200
    assert body["redis"] == "down"
    assert "hunter2" not in json.dumps(body) + sc.stderr + sc.stdout
    with EmbeddedServer(port=port, binary=server_binary) as server:
        server_acl_user(server.url)
        wait_until(lambda: sc.metric(names.WATCHER_COUNTING) == 1, "counting once Redis is up")
        assert sc.readyz() == (
            200,
            {"status": "ready", "redis": "up", "watcher": "counting", "slot": 0,
             "expiry_events": "confirmed"},
        )  # fmt: skip
        with redis.Redis.from_url(url) as client:
            client.set(run_keys("late", "u", "r").meta, b"x", px=1)
        wait_until(lambda: sc.metric(names.TTL_EXPIRIES) == 1, "the expiry counted")
        assert sc.signal(signal.SIGTERM) == 0
    assert "Traceback" not in sc.stderr


def server_acl_user(url: str) -> None:
    """The user of the sidecar's URL (agent / hunter2-secret), allowed everything."""
    with redis.Redis.from_url(url) as admin:
        admin.acl_setuser(
            "agent", enabled=True, passwords=["+hunter2-secret"], keys=["~*"], channels=["*"],
            commands=["+@all"],
        )  # fmt: skip


def test_demo_subcommand_delegates_or_says_it_is_missing(tmp_path: Path) -> None:
    if importlib.util.find_spec("sidecar.demo") is None:
        code, _, err = run_cli("demo", tmp_path=tmp_path)
        assert code == 2
        assert len(err.splitlines()) == 1
        assert "demo" in err
    else:  # the demo's own options appear in its help, through add_arguments()
        code, out, err = run_cli("demo", "--help", tmp_path=tmp_path)
        assert code == 0, err
        assert "usage: checkpoint-sidecar demo" in out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_with_exit_0_within_5_s(
    sig: signal.Signals, private_server: EmbeddedServer, sidecar_factory: Factory
) -> None:
    sc = sidecar_factory(*serve_args(private_server.url, "sig")).wait_serving()
    assert sc.readyz()[0] == 200
    started = time.monotonic()
    code = sc.signal(sig)
    elapsed = time.monotonic() - started
    assert code == 0, sc.stderr
    assert elapsed < 5.0
    assert "Traceback" not in sc.stderr


def test_embedded_server_prints_its_url_and_stops_with_the_sidecar(
    sidecar_factory: Factory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    sc = sidecar_factory(
        "serve", "--embedded", "--port", "0", "--data-dir", str(data_dir), env=clean_env()
    ).wait_serving()
    match = re.search(r"SIDECAR_REDIS_URL=(redis://127\.0\.0\.1:(\d+)/0)", sc.stdout)
    assert match, sc.stdout
    port = int(match.group(2))
    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
        conn.sendall(b"PING\r\n")
        assert conn.recv(16).startswith(b"+PONG")
    assert sc.readyz()[0] == 200  # ready at once: readiness does not wait for Redis
    # the watcher connects in the background: its expiry events are confirmed soon after
    wait_until(lambda: sc.readyz()[1]["expiry_events"] == "confirmed", "expiry events confirmed")
    assert sc.signal(signal.SIGTERM) == 0
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
    assert data_dir.is_dir()  # persistence was asked: the directory is kept


def test_no_redis_url_is_an_error_unless_embedded(tmp_path: Path) -> None:
    """A production sidecar whose SIDECAR_REDIS_URL is missing must not quietly watch a
    private empty server (it used to start one)."""
    code, out, err = run_cli("serve", "--port", "0", tmp_path=tmp_path)
    assert code == 1
    assert "Traceback" not in err
    assert "embedded Valkey" not in out
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert "SIDECAR_REDIS_URL" in errors[0]
    assert "--embedded" in errors[0]


def test_unusable_multiproc_dir_is_one_line(private_server: EmbeddedServer, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, _, err = run_cli(
        *serve_args(private_server.url, "mpd", "--multiproc-dir", str(blocker / "sub")),
        tmp_path=tmp_path,
    )
    assert code == 1
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(
        "checkpoint-sidecar serve: error: multiprocess directory"
    )


def test_dashboards_and_alerts_are_generated(tmp_path: Path) -> None:
    code, out, err = run_cli("dashboards", "--out", str(tmp_path / "dash"), tmp_path=tmp_path)
    assert "dashboards written" in out
    assert code == 0, err
    assert sorted(p.suffix for p in (tmp_path / "dash").iterdir()) == [".json", ".json"]
    rules = tmp_path / "rules.yml"
    code, _, err = run_cli("alerts", "--out", str(rules), "--budget-ms", "50", tmp_path=tmp_path)
    assert code == 0, err
    assert "groups:" in rules.read_text()
    code, _, err = run_cli("alerts", "--slo", "1.5", tmp_path=tmp_path)
    assert code == 2
    assert "--slo" in err.splitlines()[-1]
