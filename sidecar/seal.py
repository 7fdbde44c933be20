"""The stored-value envelope: what a section's serialized JSON becomes in Redis, and back.

Writing: JSON → zstd or raw DEFLATE (``compression="zstd"`` or ``"deflate"``, when the JSON
has at least ``compression_min_bytes``, and only when that makes it smaller) → AES-256-GCM
with the current key (when keys are configured), behind a small header. Reading reverses it,
and never returns a value that does not authenticate: :class:`~sidecar.errors.IntegrityError`
instead.

Stored forms (byte 0 tells them apart: JSON text always starts with an ASCII byte)::

    <JSON>                                       identity: as written before this format
                                                 existed, and still when nothing applies
    C5 01 <flags> <body>                         header, then the (compressed) JSON
    C5 01 <flags|80> <n> <key id: n bytes>       encrypted: 12-byte nonce, then ciphertext
          <nonce: 12 bytes> <ciphertext + 16-byte tag>     and GCM tag of the (compressed) JSON

    flags: bits 0-6 codec (0 none, 1 zstd, 2 raw DEFLATE), bit 7 encrypted

DEFLATE values are written by ISA-L (the ``isal`` package: the least CPU per byte of the codecs
measured, ~1.6x less than zstd level 1 here) as raw RFC 1951 streams, so any reader opens them
with the standard library's ``zlib`` when ``isal`` is not installed.

The associated data of the cipher is the header (so the codec and key id cannot be altered)
followed by the *binding*: key prefix, user id, run id and section name, length-prefixed. A
ciphertext copied to another run, user, section or key prefix therefore fails to authenticate.
Each write draws a fresh random 96-bit nonce (``os.urandom``): under NIST SP 800-38D's bound
for random nonces, rotate a key before it has sealed 2**32 values.

Decompression is bounded by ``max_section_bytes``, so a hostile unencrypted value cannot
inflate into gigabytes. zstd, isal and cryptography are optional extras, imported only when used.
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from sidecar.errors import IntegrityError, SerializationError

if TYPE_CHECKING:
    from sidecar.config import CheckpointConfig
    from sidecar.keyring import KeyRing

logger = logging.getLogger("sidecar")
MAGIC: Final = 0xC5
VERSION: Final = 1
CODEC_NONE: Final = 0
CODEC_ZSTD: Final = 1
CODEC_DEFLATE: Final = 2
ENCRYPTED: Final = 0x80
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
ZSTD_LEVEL: Final = 1  # the default: ~2.8x on English report text; 3 gains 4% for ~50% more CPU
DEFLATE_LEVEL: Final = 0  # ISA-L's fastest: ~2.5x on English report text
_DEFAULT_LEVELS: Final = {"none": 0, "zstd": ZSTD_LEVEL, "deflate": DEFLATE_LEVEL}
_CODECS: Final = {"none": CODEC_NONE, "zstd": CODEC_ZSTD, "deflate": CODEC_DEFLATE}
_CODEC_NAMES: Final = {CODEC_NONE: "none", CODEC_ZSTD: "zstd", CODEC_DEFLATE: "deflate"}
_DOMAIN: Final = b"checkpoint-sidecar/section/1"


def _part(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(4, "big") + raw


@dataclass(frozen=True, slots=True)
class RunBinding:
    """What a sealed value is bound to, minus the section: built once per run (manager)."""

    prefix: bytes

    @classmethod
    def of(cls, key_prefix: str, user_id: str, run_id: str) -> RunBinding:
        return cls(_DOMAIN + _part(key_prefix) + _part(user_id) + _part(run_id))

    def section(self, name: str) -> bytes:
        """The associated data for ``name`` in this run."""
        return self.prefix + _part(name)


def binding(key_prefix: str, user_id: str, run_id: str, section: str) -> bytes:
    """The associated data binding a sealed value to its key prefix, user, run and section."""
    return RunBinding.of(key_prefix, user_id, run_id).section(section)


class Sealer:
    """Seals values for Redis and opens them; one per Checkpointer, built from its config.

    Safe to share between tasks and threads: zstd contexts are per thread, AESGCM objects
    hold only their key.
    """

    def __init__(
        self,
        *,
        compression: str = "none",
        compression_min_bytes: int = 512,
        compression_level: int | None = None,
        keyring: KeyRing | None = None,
        read_unencrypted: bool = True,
        max_bytes: int = 1024 * 1024,
    ) -> None:
        if compression not in _CODECS:
            raise ValueError(f"compression must be one of {', '.join(_CODECS)}")
        self.compression = compression
        self.min_bytes = compression_min_bytes
        self.level = (
            _DEFAULT_LEVELS[compression] if compression_level is None else compression_level
        )
        self._codec = _CODECS[compression]
        self.max_bytes = max_bytes
        self.read_unencrypted = read_unencrypted or keyring is None
        self.key_ids: tuple[str, ...] = () if keyring is None else keyring.ids
        self._ciphers: dict[bytes, Any] = {}
        self._current: tuple[bytes, Any] | None = None
        if keyring is not None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            for key_id in keyring.ids:
                key = keyring.get(key_id)
                assert key is not None
                self._ciphers[key_id.encode("ascii")] = AESGCM(key.material)
            current = keyring.current.key_id.encode("ascii")
            self._current = (current, self._ciphers[current])
        self._zstd = threading.local()
        self._deflate: Callable[[bytes], bytes] | None = None
        # associated data matters only to a cipher: without keys, readers skip building it
        self.decrypts = bool(self._ciphers)
        # the identity form: nothing to do on write (the plain path stays as it was)
        self.identity = compression == "none" and keyring is None

    @classmethod
    def from_config(cls, config: CheckpointConfig) -> Sealer:
        return cls(
            compression=config.compression,
            compression_min_bytes=config.compression_min_bytes,
            compression_level=config.compression_level,
            keyring=config.keyring,
            read_unencrypted=config.read_unencrypted,
            max_bytes=config.max_section_bytes,
        )

    def __repr__(self) -> str:
        return (
            f"Sealer(compression={self.compression!r}, level={self.level}, "
            f"min_bytes={self.min_bytes}, "
            f"key_ids={list(self.key_ids)!r})"
        )

    # --- writing ---------------------------------------------------------------------------

    def seal(self, payload: bytes, aad: bytes, *, binary: bool = False) -> bytes:
        """The stored form of ``payload`` (serialized JSON); ``aad`` from :func:`binding`.

        ``binary``: the payload is not JSON text (it may start with any byte), so it always
        gets a header, even when nothing else applies."""
        if self.identity and not binary:
            return payload
        codec = CODEC_NONE
        body = payload
        if self._codec != CODEC_NONE and len(payload) >= self.min_bytes:
            packed = self._compress(payload)
            if len(packed) < len(payload):
                codec, body = self._codec, packed
        if self._current is None:
            if codec == CODEC_NONE and not binary:
                return payload  # incompressible or small: the identity form, no header
            return bytes((MAGIC, VERSION, codec)) + body
        key_id, cipher = self._current
        header = bytes((MAGIC, VERSION, codec | ENCRYPTED, len(key_id))) + key_id
        nonce = os.urandom(NONCE_BYTES)
        sealed: bytes = cipher.encrypt(nonce, body, header + aad)
        return header + nonce + sealed

    # --- reading ---------------------------------------------------------------------------

    def open(
        self, stored: bytes | str, aad: bytes, section: str = "?", *, binary: bool = False
    ) -> bytes:
        """The serialized JSON of a stored value; raises IntegrityError when it does not
        authenticate (or is not encrypted while encryption is required), SerializationError
        when it needs a codec that is not installed. ``section`` names it in messages."""
        if isinstance(stored, str):  # a client with decode_responses=True: JSON text only
            stored = stored.encode("utf-8")
        elif not isinstance(stored, bytes):  # a reply of another shape: never parsed as ours
            raise IntegrityError(
                f"section {section!r}: expected a stored value, Redis answered a "
                f"{type(stored).__name__}"
            )
        if not stored or stored[0] != MAGIC:
            if stored and stored[0] >= 0x80 and not binary:  # not JSON (ASCII first byte)
                raise IntegrityError(f"section {section!r}: stored value has an unknown format")
            if not self.read_unencrypted:
                raise IntegrityError(
                    f"section {section!r}: stored value is not encrypted, and "
                    "read_unencrypted is off"
                )
            return stored
        if len(stored) < 3 or stored[1] != VERSION:
            raise IntegrityError(f"section {section!r}: stored value has an unknown format")
        flags = stored[2]
        codec = flags & ~ENCRYPTED
        if flags & ENCRYPTED:
            body = self._decrypt(stored, aad, section)
        elif not self.read_unencrypted:
            raise IntegrityError(
                f"section {section!r}: stored value is not encrypted, and read_unencrypted is off"
            )
        else:
            body = stored[3:]
        if codec == CODEC_NONE:
            return body
        if codec == CODEC_ZSTD:
            return self._decompress(body, section)
        if codec == CODEC_DEFLATE:
            return self._inflate(body, section)
        raise IntegrityError(f"section {section!r}: stored value has an unknown codec ({codec})")

    def _decrypt(self, stored: bytes, aad: bytes, section: str) -> bytes:
        from cryptography.exceptions import InvalidTag

        n = stored[3] if len(stored) > 3 else 0
        start = 4 + n
        key_id = stored[4:start]
        if n == 0 or len(stored) < start + NONCE_BYTES + TAG_BYTES:
            raise IntegrityError(f"section {section!r}: encrypted value is truncated")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            shown = key_id.decode("ascii", "replace")
            raise IntegrityError(
                f"section {section!r}: sealed with key id {shown!r}, which is not configured"
                if self._ciphers
                else f"section {section!r}: stored value is encrypted and no key is configured"
            )
        nonce = stored[start : start + NONCE_BYTES]
        try:
            body: bytes = cipher.decrypt(nonce, stored[start + NONCE_BYTES :], stored[:start] + aad)
        except InvalidTag:
            raise IntegrityError(
                f"section {section!r}: stored value failed authentication (wrong key, "
                "corrupted, or copied from another run or section)"
            ) from None
        return body

    # --- codecs ----------------------------------------------------------------------------

    def _compress(self, payload: bytes) -> bytes:
        if self._codec == CODEC_DEFLATE:
            deflate = self._deflate
            if deflate is None:  # imported once, on the first write (an optional extra)
                from isal import igzip_lib

                deflate = self._deflate = partial(
                    igzip_lib.compress, level=self.level, flag=igzip_lib.COMP_DEFLATE
                )
            packed: bytes = deflate(payload)
            return packed
        found = getattr(self._zstd, "compressor", None)
        if found is None:
            import zstandard

            found = self._zstd.compressor = zstandard.ZstdCompressor(level=self.level)
        out: bytes = found.compress(payload)
        return out

    def _inflate(self, body: bytes, section: str) -> bytes:
        """Raw DEFLATE, at most ``max_bytes`` out, by the standard library: it reads what
        ISA-L wrote with no extra installed, and bounds its output (ISA-L's one-shot
        decompress does not)."""
        inflater = zlib.decompressobj(-15)
        try:
            out = inflater.decompress(body, self.max_bytes + 1)
        except zlib.error:
            raise IntegrityError(
                f"section {section!r}: stored value does not decompress (corrupted)"
            ) from None
        if len(out) > self.max_bytes:
            raise IntegrityError(
                f"section {section!r}: stored value decompresses above "
                f"max_section_bytes={self.max_bytes}"
            )
        if not inflater.eof or inflater.unused_data:
            raise IntegrityError(
                f"section {section!r}: stored value does not decompress (truncated or "
                "followed by other bytes)"
            )
        return out

    def _decompress(self, body: bytes, section: str) -> bytes:
        try:
            import zstandard
        except ImportError:
            from sidecar.config import ZSTD_HINT

            raise SerializationError(
                f"section {section!r} is stored zstd-compressed and the zstandard package "
                f"is not installed: {ZSTD_HINT}"
            ) from None
        found = getattr(self._zstd, "decompressor", None)
        if found is None:
            found = self._zstd.decompressor = zstandard.ZstdDecompressor()
        try:
            # zstandard allocates what the frame header announces and then ignores
            # max_output_size: check the announced size first (a 2 KB frame can announce
            # 64 MiB of zeros)
            if zstandard.frame_content_size(body) > self.max_bytes:
                raise ValueError("the frame announces more than max_section_bytes")
            out: bytes = found.decompress(
                body, max_output_size=self.max_bytes, allow_extra_data=False
            )
        except Exception:  # zstandard.ZstdError, or the announced size
            raise IntegrityError(
                f"section {section!r}: stored value does not decompress (corrupted, or larger "
                f"than max_section_bytes={self.max_bytes})"
            ) from None
        if len(out) > self.max_bytes:
            raise IntegrityError(
                f"section {section!r}: stored value decompresses above "
                f"max_section_bytes={self.max_bytes}"
            )
        return out


class SealCipher:
    """A LangGraph ``CipherProtocol`` (``encrypt`` / ``decrypt``) on a Checkpointer's
    :class:`Sealer`, for LangGraph's own ``EncryptedSerializer``: what
    :class:`~sidecar.langgraph.SidecarSaver` uses when encryption keys are configured (and what
    LangGraph's ``with_allowlist`` knows how to keep when it derives a serializer).

    Each blob is bound to the key prefix only: a cipher is not told the thread or channel, so a
    blob copied to another thread of the same prefix still opens there (sections are bound to
    their run and section; see docs/storage.md).
    """

    NAME: Final = "sidecar-seal"

    def __init__(self, sealer: Sealer, key_prefix: str) -> None:
        self.sealer = sealer
        self._aad = binding(key_prefix, "langgraph", "", "blob")

    def encrypt(self, plaintext: bytes) -> tuple[str, bytes]:
        return self.NAME, self.sealer.seal(plaintext, self._aad, binary=True)

    def decrypt(self, ciphername: str, ciphertext: bytes) -> bytes:
        if ciphername != self.NAME:
            raise IntegrityError(f"LangGraph blob sealed by an unknown cipher ({ciphername!r})")
        return self.sealer.open(ciphertext, self._aad, "langgraph blob", binary=True)


def decodes_responses(client: Any) -> bool:
    """Whether a redis-py client decodes replies to str (sealed values are binary)."""
    get_encoder = getattr(client, "get_encoder", None)
    return bool(get_encoder is not None and getattr(get_encoder(), "decode_responses", False))


def sealer_for(config: CheckpointConfig, client: Any) -> Sealer:
    """The Checkpointer's sealer: from the config, fitted to what ``client`` can read back.

    A client built with ``decode_responses=True`` cannot read binary values: encryption then
    raises (a caller mistake; never store plaintext when encryption was asked for), and
    compression is turned off with a warning (it only saves memory).
    """
    decodes = decodes_responses(client)
    if decodes and config.encrypts:
        raise ValueError(
            "encryption_keys need a Redis client with decode_responses=False: sealed values "
            "are binary"
        )
    if decodes and config.compression != "none":
        logger.warning(
            "compression is off for this Checkpointer: its Redis client decodes responses "
            "(decode_responses=True) and compressed values are binary"
        )
        config = config.model_copy(update={"compression": "none"})
    return Sealer.from_config(config)


def describe(stored: bytes | str) -> dict[str, Any]:
    """The header of a stored value, for tests and operators: format, codec, encrypted, key id."""
    if isinstance(stored, str) or not stored or stored[0] != MAGIC:
        return {"format": 0, "codec": "none", "encrypted": False, "key_id": None}
    flags = stored[2] if len(stored) > 2 else 0
    encrypted = bool(flags & ENCRYPTED)
    key_id = stored[4 : 4 + stored[3]].decode("ascii", "replace") if encrypted else None
    codec = _CODEC_NAMES.get(flags & ~ENCRYPTED, "unknown")
    return {"format": stored[1], "codec": codec, "encrypted": encrypted, "key_id": key_id}
