"""The seed's four-section report as a LangGraph graph, checkpointed in Redis by SidecarSaver.

Each section is a node; LangGraph checkpoints after every node through
:class:`sidecar.langgraph.SidecarSaver`. When an attempt fails (a crash, an LLM timeout), the
next attempt re-invokes the graph with ``None`` on the same thread: LangGraph resumes after the
last finished node, so finished sections are not paid for again. A successful attempt deletes
the thread's checkpoints::

    attempt 1:  summary ✓  data_analysis ✓  recommendations ✗ LLM timeout
    attempt 2:  (summary, data_analysis restored)  recommendations ✓  action_items ✓

Run it on its own (a private Valkey is started when no Redis is given)::

    python examples/langgraph_report.py                    # embedded server
    python examples/langgraph_report.py redis://127.0.0.1:6379/0

The three lines a LangGraph user changes are marked ``# <-``: build a Checkpointer, wrap it in
a SidecarSaver, compile the graph with it. Everything else is plain LangGraph.
"""

from __future__ import annotations

import asyncio
import operator
import sys
import time
from typing import Annotated, Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

from sidecar import CheckpointConfig, Checkpointer
from sidecar.demo.reporting_agent import (
    SECTIONS,
    Context,
    FlakyLLM,
    LLMTimeout,
    SimulatedLLM,
    ThinkingEmitter,
    UserExecutionContext,
    execute_with_retries,
)
from sidecar.langgraph import SidecarSaver


class ReportState(TypedDict):
    report: Annotated[dict[str, dict[str, Any]], operator.or_]  # each node adds its section


class LangGraphReportingAgent:
    """Writes a four-section report as a graph; resumes after a failed attempt."""

    def __init__(
        self,
        checkpointer: Checkpointer,
        llm: SimulatedLLM,
        *,
        emit_thinking: ThinkingEmitter | None = None,
        llm_timeout_s: float = 2.0,
    ) -> None:
        self.checkpointer = checkpointer
        self.saver = SidecarSaver(checkpointer)  # <-
        self.llm = llm
        self._emit = emit_thinking
        self.llm_timeout_s = llm_timeout_s
        self.llm_seconds_saved = 0.0
        self._context: Context | None = None
        self._resumed = False
        graph = StateGraph(ReportState)
        previous = START
        for name in SECTIONS:
            graph.add_node(name, self._node(name))
            graph.add_edge(previous, name)
            previous = name
        graph.add_edge(previous, END)
        self.graph = graph.compile(checkpointer=self.saver)  # <-

    async def emit_thinking(self, message: str) -> None:
        if self._emit is not None:
            await self._emit(message)

    @staticmethod
    def thread_config(context: Context) -> RunnableConfig:
        return {"configurable": {"thread_id": f"{context.user_id}:{context.run_id}"}}

    async def has_checkpoints(self, context: Context) -> bool:
        return await self.saver.aget_tuple(self.thread_config(context)) is not None

    async def execute(self, context: Context, stream_updates: bool = True) -> dict[str, Any]:
        """One attempt: continue the thread if an earlier attempt stopped half-way."""
        config = self.thread_config(context)
        snapshot = await self.graph.aget_state(config)
        resumed = bool(snapshot.next)  # an earlier attempt left nodes to run
        restored: dict[str, Any] = dict(snapshot.values.get("report", {})) if resumed else {}
        if resumed:
            self.llm_seconds_saved += sum(s.get("llm_seconds", 0.0) for s in restored.values())
            if stream_updates:
                await self.emit_thinking(f"Resumed from {len(restored)} checkpoints...")
        self._context, self._resumed = context, resumed
        start: ReportState | None = None if resumed else {"report": {}}
        final = await self.graph.ainvoke(start, config)
        await self.saver.adelete_thread(config["configurable"]["thread_id"])  # done: clean up
        return {
            "success": True,
            "report": {name: final["report"][name] for name in SECTIONS},
            "checkpoints_used": resumed,
            "resumed_sections": len(restored),
        }

    def _node(self, name: str) -> Any:
        async def produce(state: ReportState) -> dict[str, Any]:
            verb = "Generating remaining section:" if self._resumed else "Generating"
            await self.emit_thinking(f"{verb} {name}...")
            try:
                async with asyncio.timeout(self.llm_timeout_s):
                    section = await self.llm.generate(name, self._context)
            except TimeoutError:
                raise LLMTimeout(f"{name}: no LLM answer within {self.llm_timeout_s} s") from None
            return {"report": {name: section}}

        return produce


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

    config = CheckpointConfig(key_prefix="ckpt-example", ttl_seconds=3600, budget_ms=100)
    try:
        async with Checkpointer.from_url(redis_url, config=config) as cp:  # <-
            agent = LangGraphReportingAgent(cp, FlakyLLM(), emit_thinking=show, llm_timeout_s=0.5)
            context = UserExecutionContext(user_id="user-42", run_id=f"report-{time.time_ns()}")
            started = time.perf_counter()
            result = await execute_with_retries(agent, context)  # type: ignore[arg-type]
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


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
