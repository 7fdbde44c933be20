"""The few HTTP primitives the API needs on raw ASGI: a request that reads its body within a
limit, path segments decoded strictly, and a response to send.

The body limit is enforced twice, before the body is read whole: a ``Content-Length`` above it
is refused at once, and a chunked body is counted while it streams in, refused as soon as it
passes the limit. Nothing above the limit is ever buffered.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

from pydantic_core import from_json

from sidecar.api.problems import Problem

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
JSON_TYPE = b"application/json"
BODY_TIMEOUT_S = 10.0


class ClientGone(Exception):
    """The client disconnected before its request body was read: nothing to answer."""


def decode_segment(raw: str, name: str) -> str:
    """A percent-encoded path segment as text; 400 ``invalid_identifier`` when it is not
    valid UTF-8 once decoded (``%FF``), so no id is ever silently altered by a replacement."""
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(
            "invalid_identifier", f"{name} is not valid UTF-8 once percent-decoded"
        ) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes, what: str = "body") -> Any:
    """Strict JSON (no NaN/Infinity); 400 ``invalid_body`` for anything else."""
    if not raw.strip():
        raise Problem("invalid_body", f"the {what} is empty; send a JSON value")
    try:  # the fast parser takes strict JSON; anything else gets json.loads's verdict
        return from_json(raw, allow_inf_nan=False)
    except ValueError:
        pass
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        message = str(exc) if not isinstance(exc, RecursionError) else "nested too deeply"
        raise Problem("invalid_body", f"the {what} is not JSON: {message}") from None


@dataclass(slots=True)
class Request:
    """One HTTP request: its scope, decoded path parameters and lower-cased headers."""

    scope: Scope
    receive: Receive
    params: dict[str, str]
    headers: dict[bytes, bytes] = field(default_factory=dict)

    @classmethod
    def of(cls, scope: Scope, receive: Receive, params: dict[str, str]) -> Request:
        return cls(scope, receive, params, dict(scope["headers"]))

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")

    def query(self) -> dict[str, str]:
        raw: bytes = self.scope.get("query_string", b"")
        return dict(parse_qsl(raw.decode("latin-1"))) if raw else {}

    async def body(self, limit: int, timeout_s: float = BODY_TIMEOUT_S) -> bytes:
        """The whole body, refused with 413 ``section_too_large`` once it passes ``limit``, and
        with 400 ``invalid_body`` when it has not all arrived within ``timeout_s`` (a client
        that declares more than it sends must not hold a request open forever)."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self._read(limit)
        except TimeoutError:
            raise Problem(
                "invalid_body", f"the body did not arrive within {timeout_s:g} s (truncated?)"
            ) from None

    async def _read(self, limit: int) -> bytes:
        declared = self.headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise Problem("invalid_request", "Content-Length is not a number") from None
            if size > limit:
                raise too_large(size, limit)
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk: bytes = message.get("body", b"")
            if chunk:
                total += len(chunk)
                if total > limit:
                    raise too_large(total, limit, streamed=True)
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def too_large(size: int, limit: int, *, streamed: bool = False) -> Problem:
    said = f"more than {limit} bytes arrived" if streamed else f"the body is {size} bytes"
    return Problem("section_too_large", f"{said}; max_section_bytes is {limit}", limit=limit)


@dataclass(slots=True)
class Response:
    """What a handler answers: status, body, content type and extra headers."""

    status: int
    body: bytes = b""
    content_type: bytes | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    @classmethod
    def json(cls, status: int, value: Any) -> Response:
        return cls(status, json.dumps(value, separators=(",", ":")).encode(), JSON_TYPE)

    async def send(self, send: Send) -> None:
        headers = [(b"content-length", str(len(self.body)).encode()), *self.headers]
        if self.content_type is not None:
            headers.append((b"content-type", self.content_type))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


NO_CONTENT = Response(204)
