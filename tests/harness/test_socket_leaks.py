"""The socket-leak check of the test suite (tests/socket_leaks.py) catches a leak where it
happens, and leaves a test that closes its sockets alone."""

from __future__ import annotations

import pytest

LEAKY_AND_TIDY = """
import asyncio
import socket

KEPT = []  # the leaky test keeps its transport alive, as a forgotten client would


class Tracked(asyncio.Protocol):
    def __init__(self):
        self.lost = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc):
        self.lost.set_result(None)


async def connect(listener):
    loop = asyncio.get_running_loop()
    return await loop.create_connection(Tracked, *listener.getsockname())


def test_leaks_a_connection():
    with socket.create_server(("127.0.0.1", 0)) as listener:

        async def main():
            transport, _ = await connect(listener)
            KEPT.append(transport)  # never closed

        asyncio.run(main())


def test_closes_its_connection():
    with socket.create_server(("127.0.0.1", 0)) as listener:

        async def main():
            transport, protocol = await connect(listener)
            transport.close()
            await protocol.lost

        asyncio.run(main())
"""


def test_a_leaked_socket_fails_the_test_that_leaked_it(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("pytest_plugins = ['socket_leaks']")
    pytester.makepyfile(test_sample=LEAKY_AND_TIDY)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:asyncio")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks_a_connection*",
            "*socket(s) left open when the test's event loop closed*",
            "*opened at:*",
            "*in connect*",
        ]
    )
    assert "ERROR at teardown of test_closes_its_connection" not in result.stdout.str()
