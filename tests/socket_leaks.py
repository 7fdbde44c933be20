"""Fail the test that leaks a socket, and say where the socket was opened.

A socket an asyncio transport still holds when the test's event loop closes is reported by the
garbage collector ("ResourceWarning: unclosed <socket.socket ...>") whenever a collection
happens to run: often several tests later, in a test that has nothing to do with it, and with
no clue to its origin. That is how a real leak (redis-py's cluster client closing nothing after
a connection error) surfaced in CI twice, blamed on innocent tests.

This plugin remembers where each asyncio socket transport was created and, after each test's
teardown, fails that test (an error at teardown) for every transport of a closed event loop
that still holds an open socket, printing the stack that opened it. It then closes the socket,
so the garbage collector does not report it a second time elsewhere.

It reaches into asyncio's private ``_SelectorSocketTransport`` (the transport of every TCP and
TLS connection on the default event loop); tests only, never the library.
"""

from __future__ import annotations

import traceback
import weakref
from asyncio import selector_events
from collections.abc import Generator
from typing import Any

import pytest

_Transport = selector_events._SelectorSocketTransport
_opened: weakref.WeakKeyDictionary[Any, traceback.StackSummary] = weakref.WeakKeyDictionary()
_original_init = _Transport.__init__


def _recording_init(self: Any, *args: Any, **kwargs: Any) -> None:
    _original_init(self, *args, **kwargs)
    _opened[self] = traceback.extract_stack(limit=30)


_Transport.__init__ = _recording_init


def is_open(transport: Any) -> bool:
    """Whether the transport's socket is still open."""
    sock = transport._sock
    return sock is not None and sock.fileno() != -1


def open_transports() -> set[Any]:
    """Every asyncio socket transport whose socket is open now."""
    return {transport for transport in list(_opened.keys()) if is_open(transport)}


def leaked_transports() -> list[tuple[Any, traceback.StackSummary]]:
    """Transports whose event loop is closed but whose socket is still open."""
    found = []
    for transport, stack in list(_opened.items()):
        loop = transport._loop
        if is_open(transport) and (loop is None or loop.is_closed()):
            found.append((transport, stack))
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    result = yield
    found = leaked_transports()
    if found:
        reports = []
        for transport, stack in found:
            reports.append(f"{transport._sock!r}, opened at:\n{''.join(stack.format())}")
            _opened.pop(transport, None)
            transport._sock.close()
            transport._sock = None  # reported here, not again by the transport's __del__
        pytest.fail(
            f"{len(found)} socket(s) left open when the test's event loop closed:\n\n"
            + "\n".join(reports),
            pytrace=False,
        )
    return result
