"""The seed's ReportingSubAgent, written on checkpoint-sidecar: copy this file to start.

A report has four sections, each produced by a (slow, costly) LLM call. Every finished section
is checkpointed in Redis; when an attempt fails, the next attempt restores the finished sections
instead of paying the LLM for them again, and a successful attempt deletes its checkpoints::

    attempt 1:  summary ✓ saved   data_analysis ✓ saved   recommendations ✗ LLM timeout
    attempt 2:  summary ↺ restored  data_analysis ↺ restored  recommendations ✓  action_items ✓
                → {'success': True, 'checkpoints_used': True, 'resumed_sections': 2, ...}

Run it on its own (a private Valkey is started when no Redis is given)::

    python examples/reporting_agent.py                    # embedded server
    python examples/reporting_agent.py redis://127.0.0.1:6379/0

What to keep when you copy it: one :class:`~sidecar.Checkpointer` per process (it owns the
Redis client, the metrics and the circuit breaker), one ``cp.run(context, plan=...)`` per
attempt, one ``run.step(name, produce)`` per section, and a retry loop around ``execute``.
Replace :class:`SimulatedLLM` with your model client and ``emit_thinking`` with your UI stream.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from sidecar import CheckpointConfig, Checkpointer, CheckpointEvent, LeaseHeld

SECTIONS = ("summary", "data_analysis", "recommendations", "action_items")

# Simulated LLM latency per section in seconds (low, high): tens to hundreds of milliseconds,
# i.e. real LLM calls (seconds to a minute) scaled down so the example stays short.
LATENCY_S: dict[str, tuple[float, float]] = {
    "summary": (0.04, 0.12),
    "data_analysis": (0.12, 0.35),
    "recommendations": (0.08, 0.25),
    "action_items": (0.05, 0.15),
}

ThinkingEmitter = Callable[[str], Awaitable[None]]
Context = Any  # anything with string ``user_id`` and ``run_id`` attributes


class LLMTimeout(Exception):
    """The model did not answer in time: this attempt fails, its checkpoints stay."""


class SimulatedLLM:
    """Stands in for a model client: sleeps a realistic time, returns a ~2 KB section."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def latency(self, section: str) -> float:
        low, high = LATENCY_S.get(section, (0.05, 0.2))
        return self.rng.uniform(low, high)

    async def generate(self, section: str, context: Context) -> dict[str, Any]:
        seconds = self.latency(section)
        await asyncio.sleep(seconds)
        words = self.rng.choices(_VOCABULARY.split(), k=300)
        return {
            "title": section.replace("_", " ").title(),
            "body": " ".join(words).capitalize() + ".",
            "model": "sim-llm-1",
            "tokens": len(words) * 4 // 3,
            "llm_seconds": round(seconds, 4),
        }


@dataclass
class UserExecutionContext:
    """Your platform's context class plugs in as is: it only needs ``user_id`` and ``run_id``."""

    user_id: str
    run_id: str


class ReportingSubAgent:
    """Writes a four-section report; resumes from checkpoints after a failed attempt."""

    def __init__(
        self,
        checkpointer: Checkpointer,
        llm: SimulatedLLM,
        *,
        emit_thinking: ThinkingEmitter | None = None,
        llm_timeout_s: float = 2.0,
    ) -> None:
        self.checkpointer = checkpointer
        self.llm = llm
        self._emit = emit_thinking
        self.llm_timeout_s = llm_timeout_s
        self.llm_seconds_saved = 0.0  # LLM time not spent again thanks to restored sections

    async def emit_thinking(self, message: str) -> None:
        """Stream a progress line to the user (the seed's WebSocket ``agent_thinking`` event)."""
        if self._emit is not None:
            await self._emit(message)

    async def execute(self, context: Context, stream_updates: bool = True) -> dict[str, Any]:
        """One attempt: restore what an earlier attempt finished, produce the rest.

        Raises whatever made the attempt fail (checkpoints are kept for the next attempt), or
        :class:`~sidecar.LeaseHeld` when another worker is running this report right now.
        """
        async with self.checkpointer.run(context, plan=SECTIONS) as run:
            if run.resumed:
                restored = run.restored.values()
                self.llm_seconds_saved += sum(s.get("llm_seconds", 0.0) for s in restored)
                if stream_updates:
                    await self.emit_thinking(f"Resumed from {len(run.restored)} checkpoints...")
            for name in SECTIONS:
                if stream_updates and name not in run.restored:
                    verb = "Generating remaining section:" if run.resumed else "Generating"
                    await self.emit_thinking(f"{verb} {name}...")
                await run.step(name, partial(self._generate_section, name, context))
        return run.result()  # {'success', 'report', 'checkpoints_used', 'resumed_sections'}

    async def _generate_section(self, name: str, context: Context) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.llm_timeout_s):
                return await self.llm.generate(name, context)
        except TimeoutError:
            raise LLMTimeout(f"{name}: no LLM answer within {self.llm_timeout_s} s") from None


async def execute_with_retries(
    agent: ReportingSubAgent,
    context: Context,
    *,
    attempts: int = 3,
    backoff_s: float = 0.05,
) -> dict[str, Any]:
    """What a job runner does: retry a failed attempt; each retry resumes from checkpoints."""
    for attempt in range(1, attempts + 1):
        try:
            return await agent.execute(context)
        except LeaseHeld:
            await asyncio.sleep(backoff_s)  # another worker holds the run: wait, then resume it
        except Exception as exc:
            if attempt == attempts:
                raise
            await agent.emit_thinking(f"Attempt {attempt} failed ({exc}); retrying...")
            await asyncio.sleep(backoff_s * attempt)
    raise RuntimeError(f"run {context.run_id} still held by another worker")


class FlakyLLM(SimulatedLLM):
    """The example's failure: the third section of the first attempt never answers."""

    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__(rng)
        self.calls = 0

    async def generate(self, section: str, context: Context) -> dict[str, Any]:
        self.calls += 1
        if self.calls == 3:
            await asyncio.sleep(3600)  # hangs: the agent's LLM timeout fires
        return await super().generate(section, context)


async def main(redis_url: str | None = None, *, quiet: bool = False) -> dict[str, Any]:
    """Run one report whose first attempt fails on its third section; return the result."""
    server = None
    if redis_url is None:
        from sidecar.server.embedded import EmbeddedServer

        server = EmbeddedServer().start()
        redis_url = server.url

    async def show(message: str) -> None:
        if not quiet:
            print(f"  thinking: {message}", flush=True)

    def on_event(event: CheckpointEvent) -> None:
        if not quiet and event.kind in ("saved", "resumed", "cleaned"):
            what = f" {event.section}" if event.section else ""
            print(f"     checkpoint {event.kind}{what} ({event.duration_s * 1000:.1f} ms)")

    config = CheckpointConfig(key_prefix="ckpt-example", ttl_seconds=3600, budget_ms=100)
    try:
        async with Checkpointer.from_url(redis_url, config=config, on_event=on_event) as cp:
            agent = ReportingSubAgent(cp, FlakyLLM(), emit_thinking=show, llm_timeout_s=0.5)
            context = UserExecutionContext(user_id="user-42", run_id=f"report-{time.time_ns()}")
            started = time.perf_counter()
            result = await execute_with_retries(agent, context)
            elapsed = time.perf_counter() - started
            saved = agent.llm_seconds_saved
    finally:
        if server is not None:
            server.stop()
    if not quiet:
        print(
            f"\nsuccess={result['success']} checkpoints_used={result['checkpoints_used']} "
            f"resumed_sections={result['resumed_sections']} sections={list(result['report'])}"
            f"\n{elapsed:.2f} s in all; resuming saved {saved:.2f} s of LLM time"
        )
    return result


_VOCABULARY = (
    "revenue growth churn cohort latency margin quarter forecast pipeline region segment "
    "retention anomaly baseline variance conversion funnel uplift seasonality customers "
    "incident throughput capacity budget risk milestone owner deadline priority metric"
)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
