"""An LLM stand-in for Celery workers under test: it records every call, and can be held.

Plugged into ``examples/celery_report.py`` with ``CELERY_REPORT_LLM=recording_llm:shared``.
Each call appends ``[worker, section]`` to a Redis list of the run, so the test sees which
worker produced which section, and which sections were never produced again. While the key
``hold:<run>:<section>`` exists the call waits, so the test can kill the worker at a known
point (in the middle of that section) without guessing at timings.

Configured by ``RECORDING_LLM_URL`` (the test's private server) and ``RECORDING_LLM_WORKER``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis


def calls_key(run_id: str) -> str:
    return f"llm-calls:{run_id}"


def hold_key(run_id: str, section: str) -> str:
    return f"hold:{run_id}:{section}"


class RecordingLLM:
    """Returns a small section that names the worker which produced it."""

    def __init__(self, url: str, worker: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.worker = worker

    def generate(self, section: str, context: Any) -> dict[str, Any]:
        run_id = context.run_id
        self.client.rpush(calls_key(run_id), json.dumps([self.worker, section]))
        while self.client.exists(hold_key(run_id, section)):
            time.sleep(0.02)
        return {"title": section.replace("_", " ").title(), "worker": self.worker}


_shared: RecordingLLM | None = None


def shared() -> RecordingLLM:
    """One stand-in (one connection) per worker process."""
    global _shared
    if _shared is None:
        _shared = RecordingLLM(os.environ["RECORDING_LLM_URL"], os.environ["RECORDING_LLM_WORKER"])
    return _shared


def recorded_calls(client: redis.Redis, run_id: str) -> list[tuple[str, str]]:
    """Every call made so far for the run, in order, as (worker, section)."""
    return [tuple(json.loads(raw)) for raw in client.lrange(calls_key(run_id), 0, -1)]
