"""Fixtures of the fault-injection suite: servers of the test's own, which it may crash,
freeze, restart, starve of memory or cut connections of (see :mod:`tests.faults.inject`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidecar.server.embedded import EmbeddedServer

from .inject import SUMMARIES, Faulty

ServerFactory = Callable[..., Faulty]


@pytest.fixture
def faulty_server(server_binary: str, tmp_path: Path) -> Iterator[ServerFactory]:
    """Start servers (``persistent=True``: AOF with fsync on every write) the test may break."""
    started: list[Faulty] = []

    def start(*, persistent: bool = False, extra_args: tuple[str, ...] = ()) -> Faulty:
        data_dir = tmp_path / f"server-{len(started)}"
        server = Faulty(
            EmbeddedServer(
                binary=server_binary,
                data_dir=data_dir,
                appendonly=persistent,
                extra_args=(*(("--appendfsync", "always") if persistent else ()), *extra_args),
            )
        )
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the fault-suite figures (soak summary) whether or not output is captured."""
    if SUMMARIES:
        terminalreporter.section("fault injection summary")
        for text in SUMMARIES:
            terminalreporter.write_line(text)
