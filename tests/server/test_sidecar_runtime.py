"""The in-process API (``Sidecar``), the HTTP surface, and the expiry-flag arithmetic."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from sidecar import names
from sidecar.keys import run_keys
from sidecar.server.embedded import EmbeddedServer, free_port
from sidecar.server.runtime import Sidecar, SidecarStartError
from sidecar.server.watcher import needs_expiry_flags, with_expiry_flags


@pytest.mark.parametrize(
    ("before", "after"),
    [("", "Exe"), ("Exe", "Exe"), ("xEe", "xEe"), ("Ex", "Exe"), ("Kgl", "KglExe"),
     ("AKE", "AKE"), ("KA", "KAE"), ("Ez", "Ezxe"), ("Kx", "KxEe"), ("Ke", "KeEx")],
)  # fmt: skip
def test_expiry_flags_are_added_and_none_removed(before: str, after: str) -> None:
    assert with_expiry_flags(before) == after
    assert needs_expiry_flags(after) == ""


async def wait_for(check: Callable[[], bool], seconds: float = 20.0) -> None:
    """Poll ``check`` (a plain attribute read: nothing to await on) with a generous cap."""
    async with asyncio.timeout(seconds):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_in_process_sidecar_serves_and_counts(private_server: EmbeddedServer) -> None:
    registry = CollectorRegistry()
    async with (
        Sidecar(private_server.url, key_prefix="inproc", port=0, registry=registry) as sc,
        httpx.AsyncClient() as http,
        aioredis.Redis.from_url(private_server.url) as client,
    ):
        assert sc.port != 0
        ready = await http.get(sc.base_url + "/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "ready", "redis": "up", "watcher": "counting", "slot": 0,
            "expiry_events": "confirmed",
        }  # fmt: skip
        assert (await http.get(sc.base_url + "/healthz")).status_code == 200
        assert (await http.get(sc.base_url + "/sections")).status_code == 404
        assert (await http.post(sc.metrics_url)).status_code == 405

        await client.set(run_keys("inproc", "u", "r").meta, b"x", px=1)
        await client.set(run_keys("inproc", "u", "r").lease, b"x", px=1)
        await client.set(run_keys("inproc", "u", "r").sections, b"x", px=1)
        await wait_for(lambda: sc.expiries == 1 and sc.lease_expiries == 1)
        assert registry.get_sample_value(names.TTL_EXPIRIES) == 1

        text = await http.get(sc.metrics_url)
        assert text.headers["content-type"].startswith("text/plain")
        assert f"{names.TTL_EXPIRIES} 1.0" in text.text
        om = await http.get(
            sc.metrics_url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.endswith("# EOF\n")
        base_url = sc.base_url
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(base_url + "/healthz")


async def test_unreachable_redis_raises_a_start_error() -> None:
    sidecar = Sidecar("redis://127.0.0.1:1/0", port=0, connect_timeout=0.3)
    with pytest.raises(SidecarStartError, match=r"not reachable after 0\.3 s"):
        await sidecar.start()


async def test_healthz_fails_only_when_a_background_task_died(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Liveness: Redis unreachable is fine (200); a task that ended on its own is a wedged
    process (503), which a restart fixes."""
    sidecar = Sidecar(f"redis://127.0.0.1:{free_port()}/0", port=0, multiproc_dir=tmp_path / "mp")
    assert sidecar.reaper is not None

    async def broken() -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(sidecar.reaper, "run", broken)
    await sidecar.start(wait=False)
    try:
        async with httpx.AsyncClient() as http:
            ready = await http.get(sidecar.base_url + "/readyz")
            assert ready.json()["redis"] == "down"
            await wait_for(lambda: not sidecar.liveness()[0])
            health = await http.get(sidecar.base_url + "/healthz")
            assert health.status_code == 503
            assert health.json() == {"status": "wedged", "stopped": ["multiproc-reaper"]}
            assert (await http.get(sidecar.base_url + "/readyz")).status_code == 503
    finally:
        await sidecar.stop()


async def test_http_connections_have_tcp_nodelay(private_server: EmbeddedServer) -> None:
    """A response written as head + body must not wait for the client's delayed ACK (~40 ms):
    every accepted connection of /metrics' listener has TCP_NODELAY."""
    async with (
        Sidecar(private_server.url, key_prefix="nodelay", port=0, registry=CollectorRegistry()) as sc,
        httpx.AsyncClient() as http,
    ):  # fmt: skip
        assert (await http.get(sc.metrics_url)).status_code == 200  # keeps the connection open
        assert sc._server is not None
        connections = list(sc._server.server_state.connections)
        assert connections
        for protocol in connections:
            sock = protocol.transport.get_extra_info("socket")  # type: ignore[attr-defined]
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
