"""A real LangGraph StateGraph on SidecarSaver: crash and resume, interrupts, history, both
``ainvoke`` and ``invoke`` (the sync saver methods, from a worker thread), and the run counts."""

from __future__ import annotations

import asyncio
from typing import Any, TypedDict

import pytest
from cluster_support import LocalCluster
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt
from lg_support import lg_config, lg_cp_fixture, saver_fixture  # noqa: F401  (fixtures)
from prometheus_client import CollectorRegistry

from sidecar import Checkpointer, SyncCheckpointer, names
from sidecar.langgraph import SidecarSaver
from sidecar.server.embedded import EmbeddedServer


class State(TypedDict):
    text: str
    approved: int


def build(saver: SidecarSaver, calls: dict[str, int], fail_once: bool, ask: bool) -> Any:
    failures = {"left": 1 if fail_once else 0}

    def outline(state: State) -> dict[str, Any]:
        calls["outline"] += 1
        return {"text": state["text"] + " outline"}

    def draft(state: State) -> dict[str, Any]:
        calls["draft"] += 1
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("model call failed")
        return {"text": state["text"] + " draft"}

    def review(state: State) -> dict[str, Any]:
        calls["review"] += 1
        score = interrupt("approve?") if ask else 1
        return {"approved": int(score)}

    graph = StateGraph(State)
    graph.add_node(outline)
    graph.add_node(draft)
    graph.add_node(review)
    graph.add_edge(START, "outline")
    graph.add_edge("outline", "draft")
    graph.add_edge("draft", "review")
    graph.add_edge("review", END)
    return graph.compile(checkpointer=saver)


def runs_started(registry: CollectorRegistry, mode: str) -> float:
    return registry.get_sample_value(names.RUNS_STARTED, {"mode": mode}) or 0.0


@pytest.mark.parametrize("sync", [False, True], ids=["ainvoke", "invoke"])
async def test_crash_resume_interrupt_history(
    saver: SidecarSaver, registry: CollectorRegistry, sync: bool
) -> None:
    calls = {"outline": 0, "draft": 0, "review": 0}
    app = build(saver, calls, fail_once=True, ask=True)
    config = {"configurable": {"thread_id": f"report-{sync}"}}

    async def invoke(value: Any) -> Any:
        if sync:  # graph.invoke uses the saver's sync methods: from a worker thread
            return await asyncio.to_thread(app.invoke, value, config)
        return await app.ainvoke(value, config)

    with pytest.raises(RuntimeError, match="model call failed"):
        await invoke({"text": "q3", "approved": 0})
    assert calls == {"outline": 1, "draft": 1, "review": 0}
    assert runs_started(registry, "fresh") == 1

    paused = await invoke(None)  # resumes after the last finished node
    assert calls == {"outline": 1, "draft": 2, "review": 1}  # outline not re-run
    assert paused["__interrupt__"][0].value == "approve?"
    assert runs_started(registry, "resumed") == 1

    done = await invoke(Command(resume=7))
    assert done == {"text": "q3 outline draft", "approved": 7}
    assert calls == {"outline": 1, "draft": 2, "review": 2}
    assert runs_started(registry, "resumed") == 2
    assert runs_started(registry, "fresh") == 1

    history = [s async for s in app.aget_state_history(config)]
    ids = [s.config["configurable"]["checkpoint_id"] for s in history]
    assert ids == sorted(ids, reverse=True)  # newest first
    assert history[0].values == done and history[0].next == ()
    assert history[-1].metadata["source"] == "input"
    assert [s.metadata["step"] for s in history] == list(range(len(history) - 2, -2, -1))

    again = await invoke({"text": "q4", "approved": 0})  # new input on the thread: fresh
    assert runs_started(registry, "fresh") == 2
    assert again["__interrupt__"][0].value == "approve?"


async def test_sync_call_on_the_loop_thread_raises(saver: SidecarSaver) -> None:
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    with pytest.raises(asyncio.InvalidStateError, match="thread other than the event loop"):
        saver.get_tuple(config)
    assert await asyncio.to_thread(saver.get_tuple, config) is None


async def test_state_survives_a_new_saver(saver: SidecarSaver) -> None:
    """The thread lives in Redis: a second saver (another process, say) continues it."""
    calls = {"outline": 0, "draft": 0, "review": 0}
    config = {"configurable": {"thread_id": "handover"}}
    with pytest.raises(RuntimeError):
        await build(saver, calls, fail_once=True, ask=False).ainvoke(
            {"text": "x", "approved": 0}, config
        )
    other = SidecarSaver(saver.checkpointer)
    result = await build(other, calls, fail_once=False, ask=False).ainvoke(None, config)
    assert result == {"text": "x outline draft", "approved": 1}
    assert calls == {"outline": 1, "draft": 2, "review": 1}


@pytest.mark.timeout(180)
async def test_crash_and_resume_on_the_cluster(redis_cluster: LocalCluster) -> None:
    """The same graph on the 3+3 cluster: every call of a thread goes to its one slot."""
    redis_cluster.flushall()
    registry = CollectorRegistry()
    async with Checkpointer.from_url(
        redis_cluster.url, config=lg_config("lgc"), registry=registry
    ) as cp:
        saver = SidecarSaver(cp)
        calls = {"outline": 0, "draft": 0, "review": 0}
        app = build(saver, calls, fail_once=True, ask=False)
        for n in range(3):  # threads on different slots
            config = {"configurable": {"thread_id": f"cluster-{n}"}}
            with pytest.raises(RuntimeError):
                await app.ainvoke({"text": "q", "approved": 0}, config)
            assert (await app.ainvoke(None, config))["text"] == "q outline draft"
            app = build(saver, calls, fail_once=True, ask=False)  # fail again next thread
        assert calls == {"outline": 3, "draft": 6, "review": 3}
        assert runs_started(registry, "resumed") == 3
        await saver.acopy_thread("cluster-0", "cluster-copy")
        history = [
            s async for s in app.aget_state_history({"configurable": {"thread_id": "cluster-copy"}})
        ]
        assert history[0].values == {"text": "q outline draft", "approved": 1}


def test_invoke_on_a_sync_checkpointer(private_server: EmbeddedServer) -> None:
    """No event loop at all: graph.invoke on a SyncCheckpointer's saver, from this thread."""
    registry = CollectorRegistry()
    with SyncCheckpointer.from_url(
        private_server.url, config=lg_config("lgs"), registry=registry
    ) as sync_cp:
        saver = SidecarSaver(sync_cp)
        calls = {"outline": 0, "draft": 0, "review": 0}
        app = build(saver, calls, fail_once=True, ask=True)
        config = {"configurable": {"thread_id": "sync-thread"}}
        with pytest.raises(RuntimeError, match="model call failed"):
            app.invoke({"text": "q", "approved": 0}, config)
        assert app.invoke(None, config)["__interrupt__"][0].value == "approve?"
        assert app.invoke(Command(resume=3), config) == {"text": "q outline draft", "approved": 3}
        assert calls == {"outline": 1, "draft": 2, "review": 2}
        history = list(app.get_state_history(config))
        assert [s.metadata["step"] for s in history] == list(range(len(history) - 2, -2, -1))
        assert runs_started(registry, "fresh") == 1
        assert runs_started(registry, "resumed") == 2
