"""The stored-value envelope, byte by byte: compression, encryption, binding, rotation,
corruption, legacy values. No Redis here (tests/storage/test_sealed_redis.py stores them)."""

from __future__ import annotations

import json
import zlib

import pytest
import zstandard

from sidecar import IntegrityError, SerializationError
from sidecar.keyring import KeyRing
from sidecar.seal import MAGIC, RunBinding, Sealer, binding, describe

from .conftest import new_key

AAD = binding("ckpt", "user-1", "run-1", "summary")
MARKER = "MARKER-7f3a9c-PLAINTEXT"


def payload_of(text: str) -> bytes:
    return json.dumps({"title": MARKER, "body": text}).encode()


def sealer(*keys: str, compression: str = "zstd", **kwargs: object) -> Sealer:
    ring = KeyRing.parse(keys) if keys else None
    return Sealer(compression=compression, keyring=ring, **kwargs)  # type: ignore[arg-type]


def test_identity_when_nothing_applies(report_text: str) -> None:
    plain = sealer(compression="none")
    payload = payload_of(report_text[:20000])
    assert plain.identity
    assert plain.seal(payload, AAD) is payload  # the plain path does no work
    assert plain.open(payload, AAD) == payload


def test_zstd_compresses_real_text_and_round_trips(report_text: str) -> None:
    s = sealer()
    payload = payload_of(report_text[:20000])
    stored = s.seal(payload, AAD)
    assert describe(stored) == {"format": 1, "codec": "zstd", "encrypted": False, "key_id": None}
    assert len(payload) / len(stored) > 2.5
    assert s.open(stored, AAD) == payload


def test_deflate_compresses_real_text_and_the_standard_library_reads_it(
    report_text: str,
) -> None:
    s = sealer(compression="deflate")
    assert s.level == 0  # ISA-L's fastest, the codec's default
    payload = payload_of(report_text[:20000])
    stored = s.seal(payload, AAD)
    assert describe(stored) == {"format": 1, "codec": "deflate", "encrypted": False, "key_id": None}
    assert len(payload) / len(stored) > 2.4
    assert s.open(stored, AAD) == payload
    assert zlib.decompress(stored[3:], -15) == payload  # raw RFC 1951: no extra needed to read
    for reader in (sealer(compression="none"), sealer(), sealer(new_key("k1"))):
        assert reader.open(stored, AAD) == payload  # readers of any configuration open it


@pytest.mark.parametrize("level", [1, 3])
def test_deflate_levels_trade_cpu_for_ratio(report_text: str, level: int) -> None:
    payload = payload_of(report_text[:20000])
    fast, slower = (
        sealer(compression="deflate"),
        sealer(compression="deflate", compression_level=level),
    )
    assert slower.level == level
    assert len(slower.seal(payload, AAD)) < len(fast.seal(payload, AAD))
    assert fast.open(slower.seal(payload, AAD), AAD) == payload


def test_corrupted_truncated_or_padded_deflate_is_refused(report_text: str) -> None:
    s = sealer(compression="deflate")
    stored = s.seal(payload_of(report_text[:5000]), AAD)
    with pytest.raises(IntegrityError, match="does not decompress"):
        s.open(stored[: len(stored) // 2], AAD)
    with pytest.raises(IntegrityError, match="does not decompress"):
        s.open(stored + b"trailing", AAD)
    garbage = bytes((MAGIC, 1, 2)) + bytes(range(7, 250))
    with pytest.raises(IntegrityError, match="does not decompress"):
        s.open(garbage, AAD)


def test_a_deflate_bomb_is_refused() -> None:
    s = sealer(compression="deflate", max_bytes=1 << 20)
    packed = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = bytes((MAGIC, 1, 2)) + packed.compress(b"\0" * (64 << 20)) + packed.flush()
    assert len(bomb) < 128 << 10
    with pytest.raises(IntegrityError, match="max_section_bytes"):
        s.open(bomb, AAD)


def test_the_level_trades_ratio_for_speed_and_any_reader_opens_it(report_text: str) -> None:
    payload = payload_of(report_text[:20000])
    default, fast = sealer(), sealer(compression_level=-3)
    assert (default.level, fast.level) == (1, -3)
    quick = fast.seal(payload, AAD)
    assert describe(quick)["codec"] == "zstd"
    # a fast mode stores more bytes than level 1, and still well under the JSON
    assert len(default.seal(payload, AAD)) < len(quick) < len(payload) / 1.5
    assert default.open(quick, AAD) == payload  # readers need no level
    assert sealer(compression="none").open(quick, AAD) == payload


def test_small_and_incompressible_values_stay_as_they_are() -> None:
    s = sealer(compression_min_bytes=512)
    small = b'{"a": "short but repeated repeated repeated repeated"}'
    assert s.seal(small, AAD) == small  # below compression_min_bytes
    tiny = b'{"a": 1}'
    everything = sealer(compression_min_bytes=0)
    assert everything.seal(tiny, AAD) == tiny  # zstd's frame would make it larger
    assert everything.open(tiny, AAD) == tiny
    assert everything.seal(small, AAD)[0] == MAGIC


def test_encrypted_values_hold_no_plaintext_and_round_trip(key1: str, report_text: str) -> None:
    for compression in ("none", "zstd", "deflate"):
        s = sealer(key1, compression=compression)
        for size in (40, 2000, 20000):
            payload = payload_of(report_text[:size])
            stored = s.seal(payload, AAD)
            assert MARKER.encode() not in stored
            assert b"Python" not in stored
            assert describe(stored)["encrypted"] is True
            assert describe(stored)["key_id"] == "k1"
            assert s.open(stored, AAD) == payload


def test_fresh_nonce_per_write(key1: str) -> None:
    s = sealer(key1)
    payload = payload_of("same text " * 100)
    assert len({s.seal(payload, AAD) for _ in range(50)}) == 50


@pytest.mark.parametrize(
    "other",
    [
        binding("ckpt", "user-1", "run-2", "summary"),  # another run
        binding("ckpt", "user-2", "run-1", "summary"),  # another user
        binding("ckpt", "user-1", "run-1", "action_items"),  # another section
        binding("other", "user-1", "run-1", "summary"),  # another key prefix
        binding("ckpt", "user-1:run", "1", "summary"),  # no ambiguity at the boundaries
    ],
)
def test_a_ciphertext_moved_elsewhere_is_refused(key1: str, other: bytes) -> None:
    s = sealer(key1)
    stored = s.seal(payload_of("content"), AAD)
    with pytest.raises(IntegrityError, match="failed authentication") as info:
        s.open(stored, other, section="summary")
    assert "content" not in str(info.value)


def test_run_binding_equals_binding() -> None:
    assert RunBinding.of("ckpt", "u", "r").section("s") == binding("ckpt", "u", "r", "s")


def test_rotation_old_keys_still_decrypt(key1: str, key2: str) -> None:
    before = sealer(key1)
    old = before.seal(payload_of("old"), AAD)
    after = sealer(key2, key1)  # k2 current, k1 kept for reading
    new = after.seal(payload_of("new"), AAD)
    assert describe(new)["key_id"] == "k2"
    assert after.open(old, AAD) == payload_of("old")
    assert after.open(new, AAD) == payload_of("new")
    with pytest.raises(IntegrityError, match="key id 'k2', which is not configured"):
        before.open(new, AAD)


def test_wrong_key_with_the_same_id_is_refused(key1: str) -> None:
    stored = sealer(key1).seal(payload_of("x" * 100), AAD)
    with pytest.raises(IntegrityError, match="failed authentication"):
        sealer(new_key("k1")).open(stored, AAD)


def test_encrypted_value_without_any_key(key1: str) -> None:
    stored = sealer(key1).seal(payload_of("x"), AAD)
    with pytest.raises(IntegrityError, match="no key is configured"):
        sealer().open(stored, AAD)


def test_every_corrupted_byte_is_detected(key1: str, report_text: str) -> None:
    s = sealer(key1)
    stored = s.seal(payload_of(report_text[:3000]), AAD)
    for i in range(len(stored)):
        broken = bytearray(stored)
        broken[i] ^= 0x01
        with pytest.raises(IntegrityError):
            s.open(bytes(broken), AAD)
    for cut in (1, 3, 5, 20, len(stored) - 1):
        with pytest.raises(IntegrityError):
            s.open(stored[:cut], AAD)


def test_corrupted_compressed_value_is_refused(report_text: str) -> None:
    s = sealer()
    stored = bytearray(s.seal(payload_of(report_text[:5000]), AAD))
    stored[len(stored) // 2] ^= 0xFF
    stored[len(stored) // 2 + 1] ^= 0xFF
    with pytest.raises(IntegrityError, match="does not decompress"):
        s.open(bytes(stored), AAD)


def test_decompression_bomb_is_refused() -> None:
    s = sealer(max_bytes=1 << 20)
    bomb = bytes((MAGIC, 1, 1)) + zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))
    assert len(bomb) < 4096
    with pytest.raises(IntegrityError, match="max_section_bytes"):
        s.open(bomb, AAD)
    streamed = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (8 << 20))
    with pytest.raises(IntegrityError):
        s.open(bytes((MAGIC, 1, 1)) + streamed, AAD)


def test_legacy_plain_json_still_reads(key1: str) -> None:
    legacy = b'{"written": "before this format existed"}'
    for s in (sealer(compression="none"), sealer(), sealer(key1)):
        assert s.open(legacy, AAD) == legacy
        assert s.open(legacy.decode(), AAD) == legacy  # decode_responses clients


def test_unencrypted_values_refused_when_required(key1: str) -> None:
    s = sealer(key1, read_unencrypted=False)
    with pytest.raises(IntegrityError, match="not encrypted"):
        s.open(b'{"planted": "by someone without the key"}', AAD)
    compressed = sealer().seal(payload_of("y" * 2000), AAD)
    with pytest.raises(IntegrityError, match="not encrypted"):
        s.open(compressed, AAD)
    assert s.open(s.seal(payload_of("z"), AAD), AAD) == payload_of("z")


def test_unknown_version_and_codec_are_refused() -> None:
    s = sealer()
    with pytest.raises(IntegrityError, match="unknown format"):
        s.open(bytes((MAGIC, 9, 0)) + b"{}", AAD)
    with pytest.raises(IntegrityError, match="unknown format"):
        s.open(bytes((MAGIC ^ 1, 1, 0x81)) + b"{}", AAD)  # not JSON, not ours
    with pytest.raises(IntegrityError, match="unknown codec"):
        s.open(bytes((MAGIC, 1, 5)) + b"{}", AAD)


def test_missing_zstandard_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    stored = sealer().seal(payload_of("w" * 3000), AAD)
    monkeypatch.setitem(__import__("sys").modules, "zstandard", None)  # import now fails
    with pytest.raises(SerializationError, match=r"checkpoint-sidecar\[zstd\]"):
        Sealer(compression="none").open(stored, AAD)


def test_repr_shows_key_ids_only(key1: str, key2: str) -> None:
    s = sealer(key2, key1)
    ring = KeyRing.parse([key2, key1])
    for text in (repr(s), str(s), repr(ring), repr(ring.current), str(ring.current)):
        assert key1.split(":")[1] not in text
        assert key2.split(":")[1] not in text
    assert "k2" in repr(s)
    assert repr(ring.current) == "DataKey(key_id='k2', material=<redacted>)"


@pytest.mark.parametrize("reply", [1, [b"summary", b"{}"], None, {b"a": b"b"}])
def test_a_reply_of_another_shape_is_refused_not_a_type_error(reply: object) -> None:
    """A reply that is not a stored value (a misaligned connection would give one) raises
    the library's own error, which callers count and handle, never a TypeError."""
    for s in (sealer(compression="none"), sealer(new_key("k1"))):
        with pytest.raises(IntegrityError, match="Redis answered a"):
            s.open(reply, AAD, "summary")  # type: ignore[arg-type]
