"""Each saver method as an I/O-free flow: a generator that yields the operations to perform
and receives their results, so the async and the sync shell (:mod:`sidecar.langgraph.saver`)
run the very same steps, in the same order, with one short loop each.

A flow yields :class:`~sidecar.core.ops.Op` (perform this through the Checkpointer, give me
its result) and returns the method's result; ``list`` is a series of such flows, one per page
(:meth:`Flows.list`), so the shells stream a page's tuples before asking for the next.
Everything a method decides — which script, which keys, what to do with the reply, the run
index bookkeeping, the run counts — happens here; the shells only send and wait (sans-I/O, as
h11 does).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from functools import partial
from typing import Any, TypeAlias, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from sidecar.config import CheckpointConfig
from sidecar.core.ops import Op, script_call
from sidecar.langgraph import plan as core
from sidecar.langgraph.keys import ThreadKeys, thread_keys
from sidecar.telemetry import Metrics

T = TypeVar("T")
_CACHE_LIMIT = 4096

Flow: TypeAlias = Generator[Op[Any], Any, T]
Tuples: TypeAlias = list[
    CheckpointTuple
]  # one page of ``list`` (inside Flows, ``list`` is a method)


def _reply(raw: Any) -> Any:
    return raw


class Flows:
    """The saver's logic and bookkeeping (no I/O): thread keys built once, which (thread, run)
    pairs have a fresh run index entry, and the run counters. The saver's ``serde`` is passed
    to each call (LangGraph's ``with_allowlist`` clones a saver with another serde)."""

    def __init__(
        self, config: CheckpointConfig, metrics: Metrics, slot: Callable[[str], int | None]
    ) -> None:
        self.prefix = config.key_prefix
        self.ttl_ms = config.ttl_ms
        self.refresh_ms = config.ttl_ms if config.refresh_ttl_on_read else None
        self.metrics = metrics
        self.slot = slot
        self._keys: dict[str, tuple[ThreadKeys, int | None]] = {}
        self._runs: dict[tuple[str, str], float] = {}  # (thread, run) -> registered at

    def keys(self, thread: str) -> ThreadKeys:
        return self._thread(thread)[0]

    def _thread(self, thread: str) -> tuple[ThreadKeys, int | None]:
        """The thread's keys and hash slot, built once per thread (encoding the keys and
        hashing the slot cost ~3 us a call)."""
        found = self._keys.get(thread)
        if found is None:
            if len(self._keys) >= _CACHE_LIMIT:
                self._keys.clear()
            keys = thread_keys(self.prefix, thread)
            found = self._keys[thread] = (keys, self.slot(keys.idx))
        return found

    def op(
        self, operation: str, plan: core.Plan, label: str, parse: Callable[[Any], Any] = _reply
    ) -> Op[Any]:
        """One Redis call of a flow (its slot hashed from its first key): see :meth:`at`."""
        return self.at(self.slot(plan.keys[0]), operation, plan, label, parse)

    def at(
        self,
        slot: int | None,
        operation: str,
        plan: core.Plan,
        label: str,
        parse: Callable[[Any], Any] = _reply,
    ) -> Op[Any]:
        """One Redis call of a flow, to the shard of ``slot``, as an op of the Checkpointer's
        one instrumented path: ``operation`` is its metric and span label, ``label`` the thread
        (or '') the span names when ``trace_identifiers`` is on, ``parse`` turns the reply into
        what the flow receives (inside the op: a stored value that does not decode is recorded
        as outcome ``corrupt``). An outage always raises: it is never "no checkpoint"."""
        return Op(
            operation,
            script_call(plan.script, plan.keys, plan.args),
            ids=(label, ""),
            slot=slot,
            nothing=None,
            parse=parse,
            always_raise=True,
        )

    def count_run(self, mode: str | None) -> None:
        if mode is not None:
            self.metrics.runs_started.labels(mode).inc()

    # --- the methods ---------------------------------------------------------------------

    def get_tuple(
        self, serde: SerializerProtocol, config: RunnableConfig
    ) -> Flow[CheckpointTuple | None]:
        where = core.target(config)
        thread = where.thread_id
        keys, slot = self._thread(thread)
        plan = core.plan_get_tuple(keys, config, self.refresh_ms, where)
        parse = partial(core.parse_get_tuple, serde, thread)
        found: CheckpointTuple | None = yield self.at(slot, "lg_get_tuple", plan, thread, parse)
        return found

    def list(
        self,
        serde: SerializerProtocol,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
    ) -> Iterator[Flow[Tuples]]:
        """One flow per page, each returning that page's tuples, newest first; the next page
        is planned once the previous one has run (its cursor is known)."""
        request = core.list_request(config, filter, before, limit, self.refresh_ms)
        assert config is not None  # list_request refused None
        if core.target(config).checkpoint_id is not None:  # one named checkpoint
            yield self._named(serde, config, filter)
            return
        paging = _Paging(limit)
        while paging.more:
            yield self._page(serde, request, paging)

    def _named(
        self, serde: SerializerProtocol, config: RunnableConfig, filter: dict[str, Any] | None
    ) -> Flow[Tuples]:
        found = yield from self.get_tuple(serde, config)
        if found is not None and core.metadata_matches(found.metadata, filter):
            return [found]
        return []

    def _page(
        self, serde: SerializerProtocol, request: core.ListRequest, paging: _Paging
    ) -> Flow[Tuples]:
        keys, slot = self._thread(request.thread_id)
        plan = core.plan_list_page(keys, request, paging.cursor, paging.remaining or 0)
        parse = partial(core.parse_list_page, serde, request.thread_id)
        found, paging.cursor = yield self.at(slot, "lg_list", plan, request.thread_id, parse)
        if paging.remaining is not None:
            paging.remaining -= len(found)
        paging.more = bool(paging.cursor) and (paging.remaining is None or paging.remaining > 0)
        return found  # type: ignore[no-any-return]

    def put(
        self,
        serde: SerializerProtocol,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Flow[RunnableConfig]:
        where = core.target(config)
        thread = where.thread_id
        keys, slot = self._thread(thread)
        put = core.plan_put(
            keys, serde, config, checkpoint, metadata, new_versions, self.ttl_ms, where
        )
        run = put.run_id
        if run is not None and not self._run_fresh(thread, run):
            # the run index first: a crash after it leaves an index entry, never a checkpoint
            # that delete_for_runs cannot find
            yield from self._register_run(run, thread, "lg_put")
            put = put.registered()
        mode, stale = yield self.at(slot, "lg_put", put.plan, thread, core.parse_put)
        self.count_run(mode)
        for stale_run in stale:
            yield from self._register_run(stale_run, thread, "lg_put")
        return put.config

    def put_writes(
        self,
        serde: SerializerProtocol,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> Flow[None]:
        where = core.target(config)
        thread = where.thread_id
        keys, slot = self._thread(thread)
        plan = core.plan_put_writes(
            keys, serde, config, writes, task_id, task_path, self.ttl_ms, where
        )
        op = self.at(slot, "lg_put_writes", plan, thread, core.parse_put_writes)
        self.count_run((yield op))

    def delete_thread(self, thread_id: str) -> Flow[None]:
        yield self.op(
            "lg_delete_thread", core.plan_delete_thread(self.prefix, thread_id), thread_id
        )
        self._forget_thread(thread_id)

    def delete_for_runs(self, run_ids: Sequence[str]) -> Flow[None]:
        """Per run: read its run index, delete its checkpoints thread by thread, then drop the
        threads done from the index. Each step is idempotent: a crash leaves the index listing
        threads that may already be clean, and a retry finishes the job."""
        for run in run_ids:
            plan = core.plan_run_threads(self.prefix, run)
            threads = yield self.op("lg_delete_for_runs", plan, "", core.parse_run_threads)
            for thread in threads:
                plan = core.plan_delete_run_in_thread(self.prefix, thread, run, self.ttl_ms)
                yield self.op("lg_delete_for_runs", plan, thread)
                self._runs.pop((thread, run), None)
            if threads:
                plan = core.plan_forget_run_threads(self.prefix, run, threads)
                yield self.op("lg_delete_for_runs", plan, "")

    def copy_thread(self, source: str, target: str) -> Flow[None]:
        """Dump the source (its slot), restore it as the target (the target's slot), then add
        the target to the index of each of its runs. Re-running finishes an interrupted copy."""
        plan = core.plan_dump_thread(self.prefix, source)
        dump = yield self.op("lg_copy_thread", plan, source, core.parse_dump_thread)
        if dump is None:
            return
        plan = core.plan_restore_thread(self.prefix, target, dump, self.ttl_ms)
        yield self.op("lg_copy_thread", plan, target)
        self._forget_thread(target)
        for run in dump.run_ids:
            yield from self._register_run(run, target, "lg_copy_thread")

    def prune(self, thread_ids: Sequence[str], strategy: str) -> Flow[None]:
        for thread in thread_ids:
            plan = core.plan_prune(self.prefix, thread, strategy, self.ttl_ms)
            yield self.op("lg_prune", plan, thread)

    # --- run index bookkeeping -----------------------------------------------------------

    def _run_fresh(self, thread: str, run: str) -> bool:
        at = self._runs.get((thread, run))
        return at is not None and time.monotonic() - at < self.ttl_ms / 2000.0

    def _register_run(self, run: str, thread: str, operation: str) -> Flow[None]:
        yield self.op(
            operation, core.plan_register_run(self.prefix, run, [thread], self.ttl_ms), thread
        )
        if len(self._runs) >= _CACHE_LIMIT:
            self._runs.clear()
        self._runs[(thread, run)] = time.monotonic()

    def _forget_thread(self, thread_id: str) -> None:
        for pair in [p for p in self._runs if p[0] == thread_id]:
            del self._runs[pair]


class _Paging:
    """Where a paged ``list`` stands: tuples still wanted (None: all), the cursor of the next
    page, whether there is one."""

    __slots__ = ("cursor", "more", "remaining")

    def __init__(self, limit: int | None) -> None:
        self.remaining = limit
        self.cursor = ""
        self.more = limit is None or limit > 0
