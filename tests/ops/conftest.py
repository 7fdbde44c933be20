"""Fixtures for the generated operations artefacts: repository paths and promtool."""

from __future__ import annotations

import os
import pathlib
import shutil

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def require_tool(name: str) -> str:
    """Path of ``name``; a missing tool fails the test in CI and skips it elsewhere."""
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} not found on PATH (Debian: apt-get install prometheus)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def repo() -> pathlib.Path:
    return REPO


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool("promtool")
