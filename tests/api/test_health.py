"""The sidecar's /healthz notices the HTTP API's thread: it runs beside the sidecar's loop, so
no task of the sidecar ends when it does."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

import sidecar.api.server as api_server
from sidecar.api.cli import serve_api
from sidecar.server.embedded import EmbeddedServer
from sidecar.server.runtime import Sidecar


def _args() -> argparse.Namespace:
    return argparse.Namespace(
        api=True, api_host="127.0.0.1", api_port=0, api_socket=None, api_token_file=None,
        api_redis_url=None,
    )  # fmt: skip


async def _wait(check: Any, seconds: float = 20.0) -> None:
    async with asyncio.timeout(seconds):
        while not check():  # noqa: ASYNC110 (a flag of another thread: nothing to await)
            await asyncio.sleep(0.02)


async def test_healthz_reports_the_api_stopped_when_its_server_ends(
    private_server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[api_server.ApiThread] = []

    class Recorded(api_server.ApiThread):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            threads.append(self)

    monkeypatch.setattr(api_server, "ApiThread", Recorded)
    sidecar = Sidecar(private_server.url, key_prefix="health", port=0, registry=CollectorRegistry())
    await sidecar.start()
    try:
        async with serve_api(_args(), sidecar), httpx.AsyncClient() as http:
            (api,) = threads
            assert api.server is not None and api.running()
            health = await http.get(sidecar.base_url + "/healthz")
            assert (health.status_code, health.json()) == (200, {"status": "ok"})
            served = await http.get(api.server.url + "/v1/openapi.json")
            assert served.status_code == 200

            loop = api._loop
            assert loop is not None
            loop.call_soon_threadsafe(api.server.task.cancel)  # the API's server ends by itself
            await _wait(lambda: not api.running())

            health = await http.get(sidecar.base_url + "/healthz")
            assert health.status_code == 503
            assert health.json() == {"status": "wedged", "stopped": ["api"]}
            assert (await http.get(sidecar.base_url + "/readyz")).status_code == 503
        assert sidecar.liveness() == (True, {})  # the API stopped on purpose: not reported
    finally:
        await sidecar.stop()
