"""Bearer-token authentication of the API listener.

Loopback and a Unix socket are reachable only from the pod or host, so they need no token by
default; any other address needs one (``--api-token-file``), and once a token is configured
every request must carry it, whatever the address. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path

from sidecar.api.problems import Problem

_CHALLENGE = [(b"www-authenticate", b'Bearer realm="checkpoint-sidecar"')]


class TokenError(ValueError):
    """The token file is missing, unreadable or empty, or a token is needed and absent."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(path: str | Path) -> bytes:
    """The token in ``path`` (surrounding whitespace removed); at least 16 characters."""
    try:
        token = Path(path).read_bytes().strip()
    except OSError as exc:
        raise TokenError(f"cannot read the API token file {path}: {exc.strerror}") from None
    if len(token) < 16:
        raise TokenError(f"the API token in {path} is shorter than 16 characters")
    return token


class Authorizer:
    """Checks ``Authorization: Bearer <token>``; ``token=None`` lets every request in."""

    def __init__(self, token: bytes | None) -> None:
        self._expected = None if token is None else b"Bearer " + token

    @property
    def required(self) -> bool:
        return self._expected is not None

    def check(self, headers: list[tuple[bytes, bytes]]) -> None:
        expected = self._expected
        if expected is None:
            return
        given = b""
        for name, value in headers:
            if name == b"authorization":
                given = value
                break
        if not hmac.compare_digest(given, expected):
            raise Problem(
                "unauthorized",
                "send Authorization: Bearer <token> (the token in --api-token-file)",
                headers=_CHALLENGE,
            )


def authorizer_for(host: str | None, token_file: str | None) -> Authorizer:
    """The authorizer for a listener on ``host`` (None: a Unix socket)."""
    if token_file:
        return Authorizer(read_token(token_file))
    if host is not None and not is_loopback(host):
        raise TokenError(
            f"the API on {host} (not loopback) needs a bearer token: pass --api-token-file"
        )
    return Authorizer(None)
