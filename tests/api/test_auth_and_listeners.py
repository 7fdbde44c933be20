"""Bearer token and listeners: loopback needs none, any other address needs one, a token once
configured is required on every request (compared in constant time), a Unix socket works."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from sidecar import CheckpointConfig
from sidecar.api import ApiServer, ApiStartError
from sidecar.api.auth import is_loopback

from .conftest import assert_problem

TOKEN = "s3cret-token-0123456789"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def test_loopback_rule() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com"))


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_non_loopback_without_a_token_refuses_to_start(
    api_config: CheckpointConfig, host: str
) -> None:
    with pytest.raises(ApiStartError, match="needs a bearer token"):
        ApiServer(api_config, host=host, port=0)


def test_a_short_or_missing_token_file_refuses_to_start(
    api_config: CheckpointConfig, tmp_path: Path
) -> None:
    (tmp_path / "short").write_text("abc")
    with pytest.raises(ApiStartError, match="shorter than 16"):
        ApiServer(api_config, port=0, token_file=str(tmp_path / "short"))
    with pytest.raises(ApiStartError, match="cannot read"):
        ApiServer(api_config, port=0, token_file=str(tmp_path / "absent"))


async def test_token_required_on_every_route(
    api_config: CheckpointConfig, token_file: Path, redis_client: aioredis.Redis
) -> None:
    async with ApiServer(api_config, host="0.0.0.0", port=0, token_file=str(token_file)) as srv:
        url = f"http://127.0.0.1:{srv.port}"
        async with httpx.AsyncClient(base_url=url) as client:
            for headers in ({}, {"Authorization": "Bearer wrong"},
                            {"Authorization": TOKEN}, {"Authorization": f"Bearer {TOKEN}x"}):  # fmt: skip
                r = await client.put("/v1/runs/u/r/sections/s", content=b"1", headers=headers)
                assert_problem(r, 401, "unauthorized")
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert_problem(await client.get("/v1/openapi.json", headers=headers), 401,
                               "unauthorized")  # fmt: skip
            assert await redis_client.keys("*") == []
            good = {"Authorization": f"Bearer {TOKEN}"}
            r = await client.put("/v1/runs/u/r/sections/s", content=b"1", headers=good)
            assert r.status_code == 204
            assert (await client.get("/v1/runs/u/r/sections/s", headers=good)).json() == 1


async def test_unix_socket_listener(
    api_config: CheckpointConfig, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    path = tmp_path / "api.sock"
    path.touch()  # not a socket: must not be deleted, binding fails
    with pytest.raises(ApiStartError, match="cannot listen"):
        await ApiServer(api_config, socket_path=str(path)).start()
    path.unlink()
    async with ApiServer(api_config, socket_path=str(path)) as srv:
        assert srv.url == f"unix:{path}" and not srv.authorizer.required
        transport = httpx.AsyncHTTPTransport(uds=str(path))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            assert (await client.put("/v1/runs/u/r/sections/s", content=b"[2]")).status_code == 204
            assert (await client.get("/v1/runs/u/r/sections/s")).json() == [2]
    assert not path.exists()  # removed at stop
