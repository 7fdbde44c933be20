"""The demo run: servers up, many reporting agents with injected failures, summary, servers down.

::

    EmbeddedServer (unless a Redis URL is given)
    Sidecar (in process): /metrics on the demo's registry + the TTL-expiry watcher
    Checkpointer ×2 (normal TTL; short TTL for the runs that will be abandoned)
    └── N × ReportingSubAgent (examples/reporting_agent.py) under a semaphore, each with a
        FaultyLLM that crashes / hangs as its RunPlan says; failed attempts are retried and
        resume from their checkpoints; abandoned runs are left to expire
    optional: Redis paused (SIGSTOP) for a moment: budget timeouts, then the breaker opens

Only keys under the ``ckpt-demo`` prefix are written; nothing is ever flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, ProcessCollector
from rich.console import Console
from rich.live import Live
from rich.logging import RichHandler

from sidecar import CheckpointConfig, Checkpointer, CheckpointError, LeaseHeld, RunContext, names
from sidecar.config import redact_url
from sidecar.demo.board import Board, SpanLatencies
from sidecar.demo.display import live_view, print_summary
from sidecar.demo.reporting_agent import SECTIONS, LLMTimeout, ReportingSubAgent
from sidecar.demo.scenario import FaultyLLM, RunPlan, WorkerCrash, plan_runs
from sidecar.server.embedded import EmbeddedServer
from sidecar.server.runtime import Sidecar

KEY_PREFIX = "ckpt-demo"
LLM_TIMEOUT_S = 0.5  # simulated LLM latencies are 40-350 ms; a hang costs this much
MAX_ATTEMPTS = 4
RUN_TTL_S = 300


@dataclass(frozen=True, slots=True)
class Options:
    runs: int
    concurrency: int
    seed: int
    slow_redis_s: float | None
    keep_serving: bool
    redis_url: str | None
    metrics_port: int
    json_path: Path | None
    abandon_ttl_s: int
    budget_ms: float
    live: bool | None  # None: live display when stdout is a terminal
    node: bool = False  # also run Node agents through the HTTP API (sidecar.demo.node)
    langgraph: bool = False  # the report as a LangGraph graph on SidecarSaver


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


async def start_sidecar(url: str, registry: CollectorRegistry, port: int) -> Sidecar:
    """The in-process sidecar serving ``registry`` on /metrics and watching expiries."""
    sidecar = Sidecar(
        url, key_prefix=KEY_PREFIX, port=port, registry=registry, connect_timeout=10.0
    )
    await sidecar.start()
    return sidecar


async def until(predicate: Callable[[], bool], within: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds (True) or ``within`` seconds pass (False)."""
    deadline = time.monotonic() + within
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode("utf-8", "replace")


class Demo:
    """One demo run on an already running Redis (``server`` set when it is ours)."""

    def __init__(
        self, opts: Options, url: str, server: EmbeddedServer | None, console: Console
    ) -> None:
        self.opts = opts
        self.url = url
        self.server = server
        self.console = console
        self.session = secrets.token_hex(3)
        self.plans = plan_runs(opts.runs, opts.seed)
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.latencies = SpanLatencies()
        self.provider = TracerProvider()
        self.provider.add_span_processor(self.latencies)
        self.board = Board(
            total_runs=len(self.plans),
            abandoned_planned=sum(1 for p in self.plans if p.kind == "abandoned"),
            registry=self.registry,
            latencies=self.latencies,
            budget_ms=opts.budget_ms,
        )
        self.live = console.is_terminal if opts.live is None else opts.live
        self._last_abandon = 0.0

    def config(self, ttl_seconds: int) -> CheckpointConfig:
        return CheckpointConfig(
            redis_url=self.url, key_prefix=KEY_PREFIX, ttl_seconds=ttl_seconds,
            budget_ms=self.opts.budget_ms, strict=False, breaker_failures=5,
            breaker_cooldown_s=0.5, refresh_ttl_on_read=False, lease_ttl_seconds=30,
        )  # fmt: skip

    def checkpointer(self, ttl_seconds: int) -> Checkpointer:
        return Checkpointer.from_url(
            self.url, config=self.config(ttl_seconds), registry=self.registry,
            tracer_provider=self.provider,
        )  # fmt: skip

    # --- the whole demo ---------------------------------------------------------------------

    async def main(self) -> int:
        port = self.opts.metrics_port
        if port and not port_is_free(port):
            self.console.print(f"[yellow]port {port} is taken: serving metrics on a free port[/]")
            port = 0
        sidecar = await start_sidecar(self.url, self.registry, port)
        try:
            where = "embedded Valkey" if self.server else "your Redis"
            self.console.print(
                f"Redis: {where} at {redact_url(self.url)} (keys under {KEY_PREFIX!r} only)\n"
                f"metrics: {sidecar.metrics_url}  (scrape it while the demo runs)",
                highlight=False,
            )
            normal, short = self.checkpointer(RUN_TTL_S), self.checkpointer(self.opts.abandon_ttl_s)
            try:
                await self._drive(sidecar, normal, short)
            finally:
                await normal.aclose()
                await short.aclose()
            served = await asyncio.to_thread(scrape, sidecar.metrics_url)
            summary = self.board.summary()
            summary["metrics_url"] = sidecar.metrics_url
            summary["metrics_served"] = names.OPERATION_DURATION in served
            summary["redis"] = "embedded" if self.server else "external"
            print_summary(self.console, self.board)
            self.console.print(
                f"/metrics served {len(served)} bytes at {sidecar.metrics_url}: "
                f"{names.OPERATION_DURATION}, {names.TTL_EXPIRIES} and the rest.",
                highlight=False,
            )
            if self.opts.json_path is not None:
                self.opts.json_path.write_text(json.dumps(summary, indent=2) + "\n")
            if self.opts.keep_serving:
                await self._serve_until_signal(sidecar)
        finally:
            await sidecar.stop()
            self.provider.shutdown()
        return 0 if self.board.failed == 0 else 1

    async def _drive(self, sidecar: Sidecar, normal: Checkpointer, short: Checkpointer) -> None:
        board = self.board
        semaphore = asyncio.Semaphore(self.opts.concurrency)
        board.phase = "running"
        tasks = [
            asyncio.create_task(
                self._one_run(plan, short if plan.kind == "abandoned" else normal, semaphore)
            )
            for plan in self.plans
        ]
        helpers = [asyncio.create_task(self._watch(sidecar))]
        if self.opts.slow_redis_s:
            helpers.append(asyncio.create_task(self._slow_redis(self.opts.slow_redis_s)))
        live: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if self.live:
            live = Live(
                get_renderable=lambda: live_view(board, "checkpoint-sidecar demo"),
                console=self.console,
                refresh_per_second=8,
            )
        if self.opts.node:
            tasks.append(asyncio.create_task(self._node_runs()))
        with live:
            try:
                await asyncio.gather(*tasks)
                await self._wait_for_expiries(sidecar)
            finally:
                for helper in helpers:
                    helper.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
                if self.server is not None and board.redis_paused:
                    self.server.resume()
                board.phase = "done"

    async def _node_runs(self) -> None:
        """Node agents through the HTTP API, beside the Python ones (``--node``)."""
        from sidecar.demo.node import run_node_agents

        runs = max(4, self.opts.runs // 4)
        await self._say("node", f"{runs} Node agents start (HTTP API)")
        self.board.node = await run_node_agents(
            self.config(RUN_TTL_S), runs, self.session,
            registry=self.registry, tracer_provider=self.provider,
        )  # fmt: skip
        await self._say("node", f"Node agents done: {self.board.node}")

    async def _one_run(self, plan: RunPlan, cp: Checkpointer, semaphore: asyncio.Semaphore) -> None:
        board = self.board
        async with semaphore:
            board.active += 1
            llm = FaultyLLM(plan)
            agent_class = ReportingSubAgent
            if self.opts.langgraph:
                from sidecar.demo.langgraph_report import LangGraphReportingAgent

                agent_class = LangGraphReportingAgent  # type: ignore[assignment]
            agent = agent_class(
                cp, llm, emit_thinking=partial(self._say, plan.label), llm_timeout_s=LLM_TIMEOUT_S
            )
            context = RunContext(user_id=plan.user_id, run_id=f"{self.session}-{plan.run_id}")
            try:
                await self._attempts(plan, agent, llm, context)
            finally:
                board.active -= 1
                board.llm_seconds_spent += llm.spent_s
                board.llm_seconds_saved += agent.llm_seconds_saved

    async def _attempts(
        self, plan: RunPlan, agent: ReportingSubAgent, llm: FaultyLLM, context: RunContext
    ) -> None:
        board = self.board
        attempt = 0
        while True:
            attempt += 1
            llm.attempt = attempt
            board.attempts += 1
            try:
                result = await agent.execute(context)
            except LeaseHeld:
                await self._say(plan.label, "another worker holds this run; waiting")
                await asyncio.sleep(0.1)
                continue
            except (WorkerCrash, LLMTimeout, CheckpointError) as exc:
                if isinstance(exc, WorkerCrash):
                    board.crashes += 1
                elif isinstance(exc, LLMTimeout):
                    board.llm_timeouts += 1
                await self._say(plan.label, f"attempt {attempt} failed: {exc}")
            else:
                board.completed += 1
                self._count_graph_sections(agent, result)
                if result["checkpoints_used"]:
                    board.resumed_runs += 1
                    if board.example_result is None or plan.kind == "double":
                        board.example_result, board.example_label = result, plan.label
                await self._say(
                    plan.label,
                    f"done: {result['resumed_sections']} of {len(result['report'])} sections "
                    f"restored, {len(result['report']) - result['resumed_sections']} produced",
                )
                return
            if not plan.retried:
                board.abandoned += 1
                self._last_abandon = time.monotonic()
                has_checkpoints = getattr(agent, "has_checkpoints", None)
                if has_checkpoints is not None:
                    kept = await has_checkpoints(context)
                else:
                    kept = await agent.checkpointer.manager(context).has_checkpoints()
                if kept:
                    board.abandoned_with_checkpoints += 1
                await self._say(plan.label, "abandoned: nobody retries; its checkpoints expire")
                return
            if attempt >= MAX_ATTEMPTS:
                board.failed += 1
                return
            await asyncio.sleep(0.05 * attempt)  # the job runner's backoff before the retry

    def _count_graph_sections(self, agent: ReportingSubAgent, result: dict[str, Any]) -> None:
        """A graph's sections, counted as the core's run.step counts them (on success)."""
        if self.opts.langgraph:
            sections = agent.checkpointer.telemetry.metrics.sections
            sections.labels("restored").inc(result["resumed_sections"])
            sections.labels("produced").inc(len(SECTIONS) - result["resumed_sections"])

    async def _say(self, label: str, message: str) -> None:
        line = self.board.think(label, message)
        if not self.live:
            self.console.print(f"{self.board.elapsed:6.2f}s {line}", highlight=False, markup=False)

    # --- helpers running beside the runs ----------------------------------------------------

    async def _watch(self, sidecar: Sidecar) -> None:
        board = self.board
        was_open = False
        while True:
            board.expiries = sidecar.expiries
            board.lease_expiries = sidecar.lease_expiries
            is_open = board.circuit_open()
            if is_open != was_open:
                board.breaker_openings += is_open
                state = "open: checkpoint calls skipped" if is_open else "closed: Redis answers"
                await self._say("breaker", f"circuit {state}")
            was_open = is_open
            await asyncio.sleep(0.05)

    async def _slow_redis(self, seconds: float) -> None:
        board = self.board
        if self.server is None:
            self.console.print("[yellow]--slow-redis needs the embedded server: skipped[/]")
            return
        await until(lambda: board.done >= max(1, board.total_runs // 4), within=3600)
        board.phase = f"Redis paused for {seconds:g} s"
        await self._say("redis", f"pausing the server (SIGSTOP) for {seconds:g} s")
        self.server.pause()
        board.redis_paused = True
        board.pauses += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            self.server.resume()
            board.redis_paused = False
            board.phase = "running"
        await self._say("redis", "server resumed (SIGCONT)")

    async def _wait_for_expiries(self, sidecar: Sidecar) -> None:
        board = self.board
        expected = board.abandoned_with_checkpoints
        if not expected:
            return
        board.phase = f"waiting for {expected} abandoned runs to expire"
        deadline = self._last_abandon + self.opts.abandon_ttl_s + 4.0
        await until(lambda: sidecar.expiries >= expected, deadline - time.monotonic())
        board.expiries = sidecar.expiries
        board.lease_expiries = sidecar.lease_expiries

    async def _serve_until_signal(self, sidecar: Sidecar) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        self.console.print(f"sidecar still serving {sidecar.metrics_url}; Ctrl-C to stop")
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


class Quieter(logging.Filter):
    """Lets one record of each message template through per ``interval`` seconds."""

    def __init__(self, interval: float = 2.0) -> None:
        super().__init__()
        self.interval = interval
        self._last: dict[object, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._last.get(record.msg, -1e9) < self.interval:
            return False
        self._last[record.msg] = now
        return True


def configure_logging(console: Console) -> None:
    """Library warnings (degraded, breaker open) appear above the live display, deduplicated."""
    handler = RichHandler(console=console, show_path=False, show_time=False, markup=False)
    handler.addFilter(Quieter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


def run_demo(opts: Options, console: Console | None = None) -> int:
    """Start what is needed, run the demo, stop everything; the process exit code."""
    console = console or Console(width=None if os.isatty(1) else 120)
    configure_logging(console)
    url = opts.redis_url
    server: EmbeddedServer | None = None
    if url is None:
        console.print("No Redis given: starting a private Valkey (embedded) on loopback...")
        server = EmbeddedServer().start()
        url = server.url
    try:
        demo = Demo(opts, url, server, console)
        return asyncio.run(demo.main())
    finally:
        if server is not None:
            server.resume()
            server.stop()
