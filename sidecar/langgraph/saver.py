"""SidecarSaver: LangGraph's ``BaseCheckpointSaver`` on plain Redis, through a Checkpointer.

The async methods are a thin shell: each builds a plan (:mod:`sidecar.langgraph.plan`), sends
it through :meth:`sidecar.Checkpointer.execute` (breaker, span, histogram, budget: the same path
as the core verbs, with ``lg_*`` operation labels) and parses the reply. An outage always
raises (``CheckpointUnavailable`` / ``CheckpointTimeout``), whatever ``strict`` says: a read
answering "no checkpoint" would make LangGraph start an existing thread over.

The sync methods run the async ones on the Checkpointer's event loop from another thread
(``asyncio.run_coroutine_threadsafe``, as LangGraph's ``AsyncPostgresSaver`` does), and raise
``asyncio.InvalidStateError`` when called on that loop's own thread instead of deadlocking.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from sidecar.checkpointer import Checkpointer
from sidecar.langgraph import plan as core
from sidecar.langgraph.keys import ThreadKeys, thread_keys

T = TypeVar("T")
_RUN_CACHE_LIMIT = 4096
_KEY_CACHE_LIMIT = 4096


class SidecarSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer that stores threads in Redis through ``checkpointer``.

    Uses the checkpointer's client, key prefix, TTL (``ttl_seconds``, sliding on writes;
    ``refresh_ttl_on_read``), budget, breakers and telemetry. The checkpointer stays the
    caller's to close. ``serde`` defaults to LangGraph's ``JsonPlusSerializer``.
    """

    def __init__(
        self,
        checkpointer: Checkpointer,
        *,
        serde: SerializerProtocol | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(serde=serde)
        self.checkpointer = checkpointer
        cfg = checkpointer.config
        self._prefix = cfg.key_prefix
        self._ttl_ms = cfg.ttl_ms
        self._refresh_ms = cfg.ttl_ms if cfg.refresh_ttl_on_read else None
        self._runs: dict[tuple[str, str], float] = {}  # (thread, run) -> registered at
        self._thread_keys: dict[str, ThreadKeys] = {}
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        self.loop = loop

    # --- the one way to Redis ----------------------------------------------------------------

    async def _call(self, operation: str, step: core.Plan, thread_label: str) -> Any:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        cp = self.checkpointer
        result, error = await cp.execute(
            operation,
            "EVALSHA",
            lambda: cp.store.run_script(step.script, step.keys, step.args),
            ids=(thread_label, ""),
            slot=cp.store.slot(step.keys[0]),
        )
        if error is not None:
            raise error
        return result

    def _count_run(self, mode: str | None) -> None:
        if mode is not None:
            self.checkpointer.telemetry.metrics.runs_started.labels(mode).inc()

    # --- async API ---------------------------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        thread = core.target(config).thread_id
        step = core.plan_get_tuple(self._keys(thread), config, self._refresh_ms)
        reply = await self._call("lg_get_tuple", step, thread)
        return core.parse_get_tuple(self.serde, thread, reply)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        request = core.list_request(config, filter, before, limit, self._refresh_ms)
        assert config is not None  # list_request refused None
        if core.target(config).checkpoint_id is not None:
            found = await self.aget_tuple(config)
            if found is not None and core.metadata_matches(found.metadata, filter):
                yield found
            return
        remaining = limit
        cursor = ""
        while remaining is None or remaining > 0:
            step = core.plan_list_page(
                self._keys(request.thread_id), request, cursor, remaining or 0
            )
            reply = await self._call("lg_list", step, request.thread_id)
            entries, cursor = core.parse_list_page(reply)
            for entry in entries:
                yield core.parse_checkpoint(self.serde, request.thread_id, entry)
            if remaining is not None:
                remaining -= len(entries)
            if not cursor:
                return

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        thread = core.target(config).thread_id
        put = core.plan_put(
            self._keys(thread), self.serde, config, checkpoint, metadata, new_versions,
            self._ttl_ms,
        )  # fmt: skip
        run = put.run_id
        if run is not None and not self._run_fresh(thread, run):
            # the run index first: a crash after it leaves an index entry, never a checkpoint
            # that delete_for_runs cannot find
            await self._register_run(run, [thread])
            put = put.registered()
        mode, stale = core.parse_put(await self._call("lg_put", put.plan, thread))
        self._count_run(mode)
        for stale_run in stale:
            await self._register_run(stale_run, [thread])
        return put.config

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        thread = core.target(config).thread_id
        step = core.plan_put_writes(
            self._keys(thread), self.serde, config, writes, task_id, task_path, self._ttl_ms
        )
        reply = await self._call("lg_put_writes", step, thread)
        self._count_run(core.parse_put_writes(reply))

    async def adelete_thread(self, thread_id: str) -> None:
        await self._call(
            "lg_delete_thread", core.plan_delete_thread(self._prefix, thread_id), thread_id
        )
        self._forget_thread(thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Per run: read its run index, delete its checkpoints thread by thread, then drop the
        threads done from the index. Each step is idempotent: a crash leaves the index listing
        threads that may already be clean, and a retry finishes the job."""
        for run in run_ids:
            threads = core.parse_run_threads(
                await self._call("lg_delete_for_runs", core.plan_run_threads(self._prefix, run), "")
            )
            for thread in threads:
                step = core.plan_delete_run_in_thread(self._prefix, thread, run, self._ttl_ms)
                await self._call("lg_delete_for_runs", step, thread)
                self._runs.pop((thread, run), None)
            if threads:
                step = core.plan_forget_run_threads(self._prefix, run, threads)
                await self._call("lg_delete_for_runs", step, "")

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Dump the source (its slot), restore it as the target (the target's slot), then add
        the target to the index of each of its runs. Re-running finishes an interrupted copy."""
        dump = core.parse_dump_thread(
            await self._call(
                "lg_copy_thread", core.plan_dump_thread(self._prefix, source_thread_id),
                source_thread_id,
            )
        )  # fmt: skip
        if dump is None:
            return
        step = core.plan_restore_thread(self._prefix, target_thread_id, dump, self._ttl_ms)
        await self._call("lg_copy_thread", step, target_thread_id)
        self._forget_thread(target_thread_id)
        for run in dump.run_ids:
            await self._register_run(run, [target_thread_id], operation="lg_copy_thread")

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        for thread in thread_ids:
            step = core.plan_prune(self._prefix, thread, strategy, self._ttl_ms)
            await self._call("lg_prune", step, thread)

    def get_next_version(self, current: str | int | float | None, channel: None = None) -> str:
        """Zero-padded, so versions sort as text as they do as numbers (the tail is random, as
        InMemorySaver's, so two writers never produce the same version)."""
        return core.next_version(current)

    # --- bookkeeping (no I/O) ----------------------------------------------------------------

    def _keys(self, thread: str) -> ThreadKeys:
        """The thread's keys, built once per thread (encoding them costs ~2 us a call)."""
        keys = self._thread_keys.get(thread)
        if keys is None:
            if len(self._thread_keys) >= _KEY_CACHE_LIMIT:
                self._thread_keys.clear()
            keys = self._thread_keys[thread] = thread_keys(self._prefix, thread)
        return keys

    def _run_fresh(self, thread: str, run: str) -> bool:
        at = self._runs.get((thread, run))
        return at is not None and time.monotonic() - at < self._ttl_ms / 2000.0

    async def _register_run(
        self, run: str, threads: list[str], *, operation: str = "lg_put"
    ) -> None:
        step = core.plan_register_run(self._prefix, run, threads, self._ttl_ms)
        await self._call(operation, step, threads[0])
        if len(self._runs) >= _RUN_CACHE_LIMIT:
            self._runs.clear()
        now = time.monotonic()
        for thread in threads:
            self._runs[(thread, run)] = now

    def _forget_thread(self, thread_id: str) -> None:
        for pair in [p for p in self._runs if p[0] == thread_id]:
            del self._runs[pair]

    # --- sync API: the async methods on the checkpointer's loop, from another thread ---------

    def _sync(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self.loop
        if loop is None:
            coro.close()
            raise asyncio.InvalidStateError(
                "SidecarSaver's sync methods run on the Checkpointer's event loop: build the "
                "saver inside that loop (or pass loop=) before calling them from another thread"
            )
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise asyncio.InvalidStateError(
                "Synchronous calls to SidecarSaver are only allowed from a thread other than "
                "the event loop's (it would deadlock); use the async methods (ainvoke, "
                "aget_state...) there, or call invoke() from a worker thread"
            )
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._sync(self.aget_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        async def collect() -> list[CheckpointTuple]:
            return [t async for t in self.alist(config, filter=filter, before=before, limit=limit)]

        return iter(self._sync(collect()))

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._sync(self.aput(config, checkpoint, metadata, new_versions))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._sync(self.aput_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        self._sync(self.adelete_thread(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._sync(self.adelete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._sync(self.acopy_thread(source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._sync(self.aprune(thread_ids, strategy=strategy))

    def thread_keys(self, thread_id: str) -> tuple[str, ...]:
        """The Redis keys of one thread (for inspection and tests; no I/O)."""
        return thread_keys(self._prefix, thread_id).all
