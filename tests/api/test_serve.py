"""``checkpoint-sidecar serve`` with the API: its flags, its own listener apart from /metrics
(which serves no checkpoint content), the token rule, the Unix socket, --no-api, and the
traceparent seen by the console exporter of a real sidecar process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from server.helpers import ROOT, SidecarProcess, clean_env, serve_args, wait_until

from sidecar.server.embedded import EmbeddedServer

Factory = Callable[..., SidecarProcess]
SECRET = "do-not-leak-7f3a"


def api_url(sc: SidecarProcess) -> str:
    def found() -> str | None:
        match = re.search(r"^api (\S+) \(", sc.stdout, re.M)
        return match.group(1) if match else None

    return wait_until(found, "the api line")


def test_help_lists_the_api_flags(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sidecar", "serve", "--help"], capture_output=True, text=True,
        env=clean_env(), cwd=ROOT, check=True, timeout=30,
    ).stdout  # fmt: skip
    for flag in ("--api-host", "--api-port", "--api-socket", "--no-api", "--api-token-file"):
        assert flag in out


def test_api_beside_metrics_which_serve_no_content(
    private_server: EmbeddedServer, sidecar_factory: Factory
) -> None:
    sc = sidecar_factory(*serve_args(private_server.url, "srv")).wait_serving()
    url = api_url(sc)
    assert url != sc.base_url
    with httpx.Client(base_url=url) as client:
        r = client.put("/v1/runs/u/r/sections/summary", json={"secret": SECRET})
        assert r.status_code == 204
        assert client.get("/v1/runs/u/r/sections/summary").json() == {"secret": SECRET}
    status, body, _ = sc.get("/metrics")
    assert status == 200 and SECRET.encode() not in body and b"/v1/runs" not in body
    assert sc.get("/v1/runs/u/r/sections/summary")[0] == 404  # no content on the metrics port
    samples = sc.samples()  # the API's Checkpointer is counted on the sidecar's /metrics
    key = 'checkpoint_operation_duration_seconds_count{operation="save_section",outcome="ok"}'
    assert samples[key] == 1
    assert sc.signal(signal.SIGTERM) == 0


def test_no_api(private_server: EmbeddedServer, sidecar_factory: Factory) -> None:
    sc = sidecar_factory(*serve_args(private_server.url, "srv"), "--no-api").wait_serving()
    assert sc.readyz()[0] == 200
    assert not re.search(r"^api ", sc.stdout, re.M)
    assert sc.signal(signal.SIGTERM) == 0


def test_non_loopback_needs_a_token_file(
    private_server: EmbeddedServer, sidecar_factory: Factory, tmp_path: Path
) -> None:
    sc = sidecar_factory(*serve_args(private_server.url, "srv"), "--api-host", "0.0.0.0")
    assert sc.wait() == 1
    assert "needs a bearer token: pass --api-token-file" in sc.stderr
    assert "Traceback" not in sc.stderr
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123\n")
    sc = sidecar_factory(
        *serve_args(private_server.url, "srv"), "--api-host", "0.0.0.0",
        "--api-token-file", str(token),
    ).wait_serving()  # fmt: skip
    url = api_url(sc).replace("0.0.0.0", "127.0.0.1")
    assert "(bearer token required)" in sc.stdout
    with httpx.Client(base_url=url) as client:
        assert client.get("/v1/runs/u/r").status_code == 401
        auth = {"Authorization": "Bearer 0123456789abcdef0123"}
        assert client.get("/v1/runs/u/r", headers=auth).status_code == 404
    assert sc.signal(signal.SIGTERM) == 0


def test_unix_socket(
    private_server: EmbeddedServer, sidecar_factory: Factory, tmp_path: Path
) -> None:
    path = tmp_path / "api.sock"
    sc = sidecar_factory(
        *serve_args(private_server.url, "srv"), "--api-socket", str(path)
    ).wait_serving()
    assert api_url(sc) == f"unix:{path}"
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://x") as c:
        assert c.put("/v1/runs/u/r/sections/s", content=b"[1]").status_code == 204
    assert sc.signal(signal.SIGTERM) == 0
    assert not path.exists()


@pytest.mark.parametrize("exporter", ["console"])
def test_traceparent_with_the_console_exporter(
    private_server: EmbeddedServer, sidecar_factory: Factory, exporter: str
) -> None:
    trace_id, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    env = clean_env(OTEL_TRACES_EXPORTER=exporter, OTEL_SERVICE_NAME="sidecar-under-test")
    sc = sidecar_factory(*serve_args(private_server.url, "srv"), env=env).wait_serving()
    with httpx.Client(base_url=api_url(sc)) as client:
        headers = {"traceparent": f"00-{trace_id}-{parent}-01"}
        assert (
            client.put("/v1/runs/u/r/sections/s", content=b"1", headers=headers).status_code == 204
        )
    assert sc.signal(signal.SIGTERM) == 0  # the SDK flushes its batch at exit
    spans = [json.loads(chunk) for chunk in _json_objects(sc.stdout)]
    by_name = {s["name"]: s for s in spans}
    server = by_name["PUT /v1/runs/{user}/{run}/sections/{section}"]
    client_span = by_name["checkpoint.save_section"]
    assert server["context"]["trace_id"] == "0x" + trace_id
    assert server["parent_id"] == "0x" + parent
    assert client_span["parent_id"] == server["context"]["span_id"]


def _json_objects(text: str) -> list[str]:
    """The top-level JSON objects the console exporter printed (between other lines)."""
    found, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "{":
            depth, start = depth + 1, (i if depth == 0 else start)
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                found.append(text[start : i + 1])
    return found


def test_api_runs_are_counted_with_the_agents_in_multiprocess_mode(
    private_server: EmbeddedServer, sidecar_factory: Factory, tmp_path: Path
) -> None:
    """With --multiproc-dir, /metrics merges the agents' files and the API's own metrics into
    one family per name; the sidecar still writes nothing into the agents' directory."""
    from server.test_sidecar_multiproc import run_agents

    mp_dir = tmp_path / "multiproc"
    mp_dir.mkdir()
    sc = sidecar_factory(
        *serve_args(private_server.url, "mp", "--multiproc-dir", str(mp_dir))
    ).wait_serving()
    run_agents(private_server.url, mp_dir, tmp_path, (2,))
    with httpx.Client(base_url=api_url(sc)) as client:
        lease = client.post("/v1/runs/api-user/api-run/lease").json()
        headers = {
            "Checkpoint-Owner": lease["owner"],
            "Checkpoint-Fence": str(lease["fencing_token"]),
        }
        r = client.delete("/v1/runs/api-user/api-run/lease?outcome=completed", headers=headers)
        assert r.status_code == 204
    samples = sc.samples()
    assert samples['checkpoint_runs_started_total{mode="fresh"}'] == 3  # 2 agent runs + 1 API run
    assert samples['checkpoint_runs_finished_total{status="completed"}'] == 3
    _, body, _ = sc.get("/metrics")
    assert body.decode().count("# TYPE checkpoint_runs_started_total counter") == 1
    assert sc.process is not None
    assert not [p for p in os.listdir(mp_dir) if str(sc.process.pid) in p]


def test_the_api_writes_with_its_own_redis_url(
    private_server: EmbeddedServer, server_binary: str, sidecar_factory: Factory
) -> None:
    """--api-redis-url: the watcher's user may not write checkpoints; the API uses the agents'."""
    import redis as sync_redis

    with EmbeddedServer(binary=server_binary) as agents_redis:
        sc = sidecar_factory(
            *serve_args(private_server.url, "own", "--api-redis-url", agents_redis.url)
        ).wait_serving()
        with httpx.Client(base_url=api_url(sc)) as client:
            assert client.put("/v1/runs/u/r/sections/s", json={"x": 1}).status_code == 204
        with (
            sync_redis.Redis.from_url(agents_redis.url) as a,
            sync_redis.Redis.from_url(private_server.url) as w,
        ):
            assert [k for k in a.keys("own:*") if k.endswith(b":sections")] == [
                b"own:{u:r}:sections"
            ]
            assert [k for k in w.keys("own:{*")] == []  # nothing on the sidecar's own Redis
        assert sc.signal(signal.SIGTERM) == 0
