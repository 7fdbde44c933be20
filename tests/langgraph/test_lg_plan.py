"""The I/O-free core of the saver: versions, the packed reply format, writes order, checks."""

from __future__ import annotations

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.serde.types import ERROR, INTERRUPT

from sidecar import InvalidIdentifier
from sidecar.langgraph import plan as core
from sidecar.langgraph.keys import thread_keys

SERDE = JsonPlusSerializer()


def pack(parts: list[bytes]) -> bytes:
    """What the scripts' ``pack`` builds."""
    return b",".join(str(len(p)).encode() for p in parts) + b";" + b"".join(parts)


@pytest.mark.parametrize("version", ["000000000003.0a1b2c3d", 7, 2.5, "#odd", ""])
def test_versions_round_trip(version: str | int | float) -> None:
    token = core.encode_version(version)
    assert core.decode_version(token) == version
    assert type(core.decode_version(token)) is type(version)


def test_next_version_sorts_as_text_as_it_counts() -> None:
    versions = [core.next_version(None)]
    for _ in range(12):
        versions.append(core.next_version(versions[-1]))
    assert sorted(versions) == versions
    assert core.next_version(41).startswith("000000000042.")
    assert len(versions[0]) == 21


def test_unpack_reads_what_pack_writes() -> None:
    parts = [b"", b"a;b,c", bytes(range(256)), b"x" * 5000]
    assert core.unpack(pack(parts)) == parts
    assert core.unpack(b";") == []


def writes_blob(rows: list[tuple[str, int, str, str, object]]) -> bytes:
    out = b""
    for task, idx, path, channel, value in rows:
        kind, data = SERDE.dumps_typed(value)
        body = f"{task}\x1f{idx}\x1f{path}\x1f{channel}\x1f{kind}\x1f".encode() + data
        out += b"%d:%b" % (len(body), body)
    return out


def test_pending_writes_in_langgraph_order_first_regular_last_special() -> None:
    blob = writes_blob([
        ("t2", 0, "~b", "ch", "b0"),
        ("t1", 1, "~a", "ch", "a1"),
        ("t1", 0, "~a", "ch", "a0"),
        ("t1", 0, "~a", "ch", "a0-retried"),  # a retried put_writes: the first copy stays
        ("t1", -1, "~a", ERROR, "first error"),
        ("t1", -1, "~a", ERROR, "last error"),  # special writes: the last one wins
        ("t0", 0, "", "input", "i"),  # no task path (graph input) sorts first
    ])  # fmt: skip
    assert core._pending_writes(SERDE, blob) == [
        ("t0", "input", "i"),
        ("t1", ERROR, "last error"),
        ("t1", "ch", "a0"),
        ("t1", "ch", "a1"),
        ("t2", "ch", "b0"),
    ]


def test_put_writes_plan_flags_halting_writes() -> None:
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": "c1"}}
    keys = thread_keys("p", "t")
    plain = core.plan_put_writes(keys, SERDE, config, [("ch", 1)], "task", "", 1000)  # type: ignore[arg-type]
    halting = core.plan_put_writes(keys, SERDE, config, [(INTERRUPT, "?")], "task", "", 1000)  # type: ignore[arg-type]
    assert (plain.args[3], halting.args[3]) == ("0", "1")
    assert plain.keys == keys.all


def test_put_plan_refuses_separators_in_names() -> None:
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"bad\x1fname": 1}
    checkpoint["channel_versions"] = {"bad\x1fname": "000000000001.00000000"}
    with pytest.raises(InvalidIdentifier):
        core.plan_put(
            thread_keys("p", "t"),
            SERDE,
            config,
            checkpoint,
            {},
            {},
            1000,  # type: ignore[arg-type]
        )
    with pytest.raises(InvalidIdentifier):
        core.target({"configurable": {"thread_id": "t", "checkpoint_ns": "a\x1eb"}})


def test_list_of_every_thread_is_refused() -> None:
    with pytest.raises(ValueError, match="scan of the keyspace"):
        core.list_request(None, None, None, None, None)


def test_import_without_langgraph_names_the_extra_and_keys_still_load() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['langgraph.checkpoint.base'] = None\n"
        "from sidecar.langgraph.keys import parse_thread_key\n"  # what the watcher needs
        "print(parse_thread_key('p', 'p:lg:{t%201}:idx'))\n"
        "try:\n    from sidecar.langgraph import SidecarSaver\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "ParsedThreadKey(thread_id='t 1', kind='idx')" in out
    assert "pip install 'checkpoint-sidecar[langgraph]'" in out


def test_registered_put_flags_only_the_registration() -> None:
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": "p"}}
    checkpoint = empty_checkpoint()
    checkpoint["id"] = "c2"
    put = core.plan_put(
        thread_keys("p", "t"),
        SERDE,
        config,
        checkpoint,
        {"run_id": "r"},
        {},
        1000,  # type: ignore[arg-type]
    )
    head = str(put.plan.args[0]).split("\x1f")
    assert head == ["", "c2", "p", "1000", "r", "0", "0"]
    again = str(put.registered().plan.args[0]).split("\x1f")
    assert again == ["", "c2", "p", "1000", "r", "1", "0"]
    assert put.registered().plan.args[1:] == put.plan.args[1:]


def test_reads_send_the_runs_key_only_when_they_slide_the_ttl() -> None:
    keys = thread_keys("p", "t")
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    plain = core.plan_get_tuple(keys, config, None)  # type: ignore[arg-type]
    sliding = core.plan_get_tuple(keys, config, 5000)  # type: ignore[arg-type]
    assert plain.keys == (keys.idx, keys.state)
    assert sliding.keys == keys.all
    request = core.list_request(config, None, None, 10, None)  # type: ignore[arg-type]
    assert core.plan_list_page(keys, request, "", 10).keys == (keys.idx, keys.state)
    request = core.list_request(config, None, None, 10, 5000)  # type: ignore[arg-type]
    assert core.plan_list_page(keys, request, "", 10).keys == keys.all
