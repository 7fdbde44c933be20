"""Fuzzing a real sidecar process: every request gets a documented status and a problem body,
never a 500 or a hang, and never writes a key of a run it did not name.

* schemathesis generates requests from the OpenAPI description (valid and invalid ones);
* hypothesis drives ids and section names of any text through percent-encoding;
* a victim run saved first must be byte-for-byte intact at the end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes, urlsplit

import httpx
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode
from server.helpers import SidecarProcess, serve_args

from sidecar.api.openapi import build
from sidecar.api.problems import CODES, PROBLEM_TYPE
from sidecar.keys import parse_key, run_keys
from sidecar.server.embedded import EmbeddedServer
from sidecar.server.fleet import is_sidecar_key

from .test_serve import api_url

PREFIX = "fuzz"
VICTIM = ("victim-user", "victim-run")
VICTIM_CONTENT = b'{"precious":true}'
named: set[tuple[str, str]] = {VICTIM}  # every (user, run) a fuzz request named
DOCUMENTED = {
    (path, method.upper()): {int(s) for s in op["responses"]}
    for path, ops in build()["paths"].items()
    for method, op in ops.items()
}


@pytest.fixture(scope="module")
def fuzz_server(server_binary: str) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(binary=server_binary) as server:
        yield server


@pytest.fixture(scope="module")
def fuzz_api(
    fuzz_server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    sc = SidecarProcess(serve_args(fuzz_server.url, PREFIX), workdir).start().wait_serving()
    try:
        url = api_url(sc)
        with httpx.Client(base_url=url) as client:
            r = client.put(
                "/v1/runs/victim-user/victim-run/sections/report", content=VICTIM_CONTENT
            )
            assert r.status_code == 204
        yield url
    finally:
        sc.kill()


@pytest.fixture(scope="module")
def api_schema(fuzz_api: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz_api}/v1/openapi.json")


def check_problem(status: int, body: bytes, ctype: str) -> None:
    """An error answer is an RFC 9457 problem whose code is one of ours, for that status."""
    if status >= 400:
        assert ctype == PROBLEM_TYPE, (status, body[:200])
        doc = json.loads(body)
        assert doc["code"] in CODES and CODES[doc["code"]][0] == status == doc["status"]


def check_case(case: schemathesis.Case, base_url: str) -> None:
    response = case.call(base_url=base_url, timeout=10)
    # the ids as they were sent (a generated list or number is serialized into the path)
    parts = urlsplit(response.request.url).path.split("/")
    if len(parts) > 4 and parts[1:3] == ["v1", "runs"]:
        named.add(tuple(unquote_to_bytes(p).decode("utf-8", "replace") for p in parts[3:5]))  # type: ignore[arg-type]
    status = response.status_code
    assert status < 500, (status, response.text[:500])
    documented = DOCUMENTED[(case.operation.path, case.method.upper())]
    assert status in documented | {404, 405}, (case.method, case.path, status, response.text[:300])
    check_problem(status, response.content, response.headers.get("content-type", [""])[0])


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis(api_schema: schemathesis.BaseSchema, mode: GenerationMode) -> None:
    """Every operation, valid and invalid requests generated from the OpenAPI description."""
    base_url = api_schema.location.removesuffix("/v1/openapi.json")
    operations = [result.ok() for result in api_schema.get_all_operations()]
    # schemathesis leaves out the document it was loaded from; test_openapi covers that route
    assert {(op.path, op.method.upper()) for op in operations} == set(DOCUMENTED) - {
        ("/v1/openapi.json", "GET")
    }
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def one(case: schemathesis.Case) -> None:
            check_case(case, base_url)

        one()


ID = st.text(min_size=0, max_size=300)


@given(user=ID, run=ID, section=st.text(min_size=0, max_size=220), content=st.binary(max_size=64))
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_text_ids_round_trip_or_are_refused(
    fuzz_api: str, fuzz_server: EmbeddedServer, user: str, run: str, section: str, content: bytes
) -> None:
    try:
        target = "/v1/runs/{}/{}/sections/{}".format(
            *(quote(s.encode("utf-8", "surrogatepass"), safe="") for s in (user, run, section))
        )
    except UnicodeEncodeError:
        return
    named.add((user, run))
    with httpx.Client(base_url=fuzz_api, timeout=10) as client:
        r = client.request("PUT", "/", extensions={"target": target.encode()}, content=content)
        valid_ids = all(len(s) > 0 for s in (user, run, section)) and not any(
            "\ud800" <= ch <= "\udfff" for ch in user + run + section
        )
        valid_ids = valid_ids and len(user) <= 256 and len(run) <= 256 and len(section) <= 200
        if r.status_code == 204:
            assert valid_ids
            got = client.request("GET", "/", extensions={"target": target.encode()})
            assert got.status_code == 200
            with redis.Redis.from_url(fuzz_server.url) as plain:
                assert plain.hexists(run_keys(PREFIX, user, run).sections, section)
        else:
            check_problem(r.status_code, r.content, r.headers["content-type"])
            assert r.status_code == 400
            assert r.json()["code"] == ("invalid_body" if valid_ids else "invalid_identifier")


def test_no_write_to_a_run_nobody_named(fuzz_server: EmbeddedServer, fuzz_api: str) -> None:
    """Runs after the fuzzers in this module: every key belongs to a run some request named,
    and the victim's checkpoint is intact."""
    with redis.Redis.from_url(fuzz_server.url) as plain:
        keys = list(plain.scan_iter(count=1000))
        assert plain.hget(run_keys(PREFIX, *VICTIM).sections, "report") == VICTIM_CONTENT
    assert keys
    for key in keys:
        if is_sidecar_key(PREFIX, key):  # the sidecar's own slot lease and claims
            continue
        name = key.decode()
        if name.endswith(":done"):  # a completed run's marker (not a watcher KeyKind)
            name = name.removesuffix(":done") + ":meta"
        parsed = parse_key(PREFIX, name)
        assert parsed is not None, key
        assert (parsed.user_id, parsed.run_id) in named, key
