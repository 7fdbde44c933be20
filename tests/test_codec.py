"""The codec decodes stored JSON exactly as ``json.loads`` does, through a faster parser: every
edge where the two parsers differ must fall back, never change a value or refuse one."""

from __future__ import annotations

import json
import math
import random
import struct

import pytest

from sidecar import SerializationError, codec

EDGES = [
    b"123456789012345678901234567890123",  # beyond 64 bits
    b"-0.0",
    b"1e-400",
    b"-1e400",
    b"5e-324",
    b"1.7976931348623157e308",
    b'{"a": 1, "a": 2}',  # duplicate keys: the last wins
    b'"\\ud800"',  # a lone surrogate escape: json.loads keeps it
    b'"\\u00e9\\n\\t\\"\\\\"',
    b"[NaN, Infinity, -Infinity]",
    b"[" * 600 + b"]" * 600,  # deeper than pydantic-core's limit, within json.loads's
    '"caf\u00e9 \U0001f600"'.encode(),
    b' {"x": [1, 2.5, true, false, null, "s", {}]} ',
]


@pytest.mark.parametrize("raw", EDGES, ids=lambda raw: raw[:24].decode("utf-8", "replace"))
def test_parse_gives_what_json_loads_gives(raw: bytes) -> None:
    expected, got = json.loads(raw), codec.parse(raw)
    assert repr(got) == repr(expected)
    assert type(got) is type(expected)
    assert repr(codec.parse(raw.decode("utf-8"))) == repr(expected)  # text as well as bytes


def test_floats_round_trip_bit_for_bit() -> None:
    rng = random.Random(7)
    checked = 0
    while checked < 20000:
        value = struct.unpack("d", rng.randbytes(8))[0]
        if math.isnan(value) or math.isinf(value):
            continue
        text = repr(value).encode()
        assert struct.pack("d", codec.parse(text)) == struct.pack("d", json.loads(text)), text
        checked += 1


@pytest.mark.parametrize("raw", [b"", b"{", b'{"a": }', b"[1,]", b"\xff\xfe", b"tru"])
def test_what_json_loads_refuses_is_still_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match=r"Expecting|Extra data|codec can't decode"):
        json.loads(raw)
    with pytest.raises(SerializationError, match="does not decode"):
        codec.load("summary", raw)
