"""Fixtures of the sidecar-process tests (helpers live in :mod:`helpers`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import SidecarProcess


@pytest.fixture
def sidecar_factory(tmp_path: Path) -> Iterator[Callable[..., SidecarProcess]]:
    """Start sidecar processes; any still running at the end of the test are killed."""
    started: list[SidecarProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> SidecarProcess:
        proc = SidecarProcess(list(args), tmp_path, env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
