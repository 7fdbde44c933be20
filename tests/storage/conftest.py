"""Fixtures of the storage tests: keys made fresh for each test, and real English text."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "bench" / "data"


def new_key(key_id: str) -> str:
    """A fresh ``"<key-id>:<base64 of 32 bytes>"`` spec."""
    return f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}"


@pytest.fixture
def key1() -> str:
    return new_key("k1")


@pytest.fixture
def key2() -> str:
    return new_key("k2")


@pytest.fixture(scope="session")
def report_text() -> str:
    """Real English prose (bench/data, Python reference excerpts under the PSF licence)."""
    return (DATA / "report-text.txt").read_text(encoding="utf-8")
