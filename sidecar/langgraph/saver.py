"""SidecarSaver: LangGraph's ``BaseCheckpointSaver`` on plain Redis, through a Checkpointer.

Two thin shells over the same I/O-free flows (:mod:`sidecar.langgraph.flows`): each method
runs its flow, performing every op it yields through the Checkpointer's one instrumented path
(``perform``: breaker, span, histogram, budget, with ``lg_*`` operation labels). The shells'
loops (``_run``, ``_run_sync``) differ only by ``await``: each sends the flow the result of
its last op until the flow returns (a plain ``send`` loop; no step objects, no context
manager: it runs on every checkpoint).

* With a :class:`sidecar.Checkpointer` (asyncio) the async methods await each step; the sync
  methods run the async ones on the Checkpointer's event loop from another thread
  (``asyncio.run_coroutine_threadsafe``, as LangGraph's ``AsyncPostgresSaver`` does) and raise
  ``asyncio.InvalidStateError`` on the loop's own thread instead of deadlocking.
* With a :class:`sidecar.SyncCheckpointer` the sync methods send each step from the calling
  thread; the async methods run the sync ones in a worker thread (``asyncio.to_thread``).

An outage always raises (``CheckpointUnavailable`` / ``CheckpointTimeout``), whatever
``strict`` says: a read answering "no checkpoint" would make LangGraph start an existing
thread over.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Sequence
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
from sidecar.langgraph.flows import Flow, Flows
from sidecar.sync.checkpointer import SyncCheckpointer

T = TypeVar("T")
Pages = Iterable[Flow[list[CheckpointTuple]]]


class SidecarSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer that stores threads in Redis through ``checkpointer``.

    ``checkpointer`` is a :class:`~sidecar.Checkpointer` (``ainvoke``, and ``invoke`` from a
    worker thread) or a :class:`~sidecar.SyncCheckpointer` (``invoke`` from any thread). The
    saver uses its client, key prefix, TTL (``ttl_seconds``, sliding on writes;
    ``refresh_ttl_on_read``), budget, breakers and telemetry; it stays the caller's to close.
    ``serde`` defaults to LangGraph's ``JsonPlusSerializer``, its blobs sealed with the
    Checkpointer's keys when ``encryption_keys`` are set (:class:`sidecar.seal.SealCipher`).
    """

    def __init__(
        self,
        checkpointer: Checkpointer | SyncCheckpointer,
        *,
        serde: SerializerProtocol | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if serde is None and checkpointer.config.encrypts:  # blobs sealed like sections
            from langgraph.checkpoint.serde.encrypted import EncryptedSerializer

            from sidecar.seal import SealCipher

            prefix = checkpointer.config.key_prefix
            serde = EncryptedSerializer(SealCipher(checkpointer.sealer, prefix))
        super().__init__(serde=serde)
        self.checkpointer = checkpointer
        self.flows = Flows(
            checkpointer.config, checkpointer.telemetry.metrics, checkpointer.store.slot
        )
        self._threaded = isinstance(checkpointer, SyncCheckpointer)
        if loop is None and not self._threaded:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        self.loop = loop

    # --- the async shell -------------------------------------------------------------------

    async def _run(self, flow: Flow[T]) -> T:
        if self._threaded:
            return await asyncio.to_thread(self._run_sync, flow)
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        perform = self.checkpointer.perform
        send = flow.send
        try:
            op = send(None)
            while True:
                op = send(await perform(op))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        finally:
            flow.close()  # a flow left by an error runs its cleanup

    async def _stream(self, pages: Pages) -> AsyncIterator[CheckpointTuple]:
        """Each page's tuples, a page at a time (the next page is read when asked for)."""
        for page in pages:
            for found in await self._run(page):
                yield found

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._run(self.flows.get_tuple(self.serde, config))

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        async for found in self._stream(self.flows.list(self.serde, config, filter, before, limit)):
            yield found

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await self._run(
            self.flows.put(self.serde, config, checkpoint, metadata, new_versions)
        )

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._run(self.flows.put_writes(self.serde, config, writes, task_id, task_path))

    async def adelete_thread(self, thread_id: str) -> None:
        await self._run(self.flows.delete_thread(thread_id))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._run(self.flows.delete_for_runs(run_ids))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._run(self.flows.copy_thread(source_thread_id, target_thread_id))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self._run(self.flows.prune(thread_ids, strategy))

    def get_next_version(self, current: str | int | float | None, channel: None = None) -> str:
        """Zero-padded, so versions sort as text as they do as numbers (the tail is random, as
        InMemorySaver's, so two writers never produce the same version)."""
        return core.next_version(current)

    def thread_keys(self, thread_id: str) -> tuple[str, ...]:
        """The Redis keys of one thread (for inspection and tests; no I/O)."""
        return self.flows.keys(thread_id).all

    # --- the sync shell --------------------------------------------------------------------

    def _run_sync(self, flow: Flow[T]) -> T:
        perform = self.checkpointer.perform
        send = flow.send
        try:
            op = send(None)
            while True:
                op = send(perform(op))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        finally:
            flow.close()

    def _stream_sync(self, pages: Pages) -> Iterator[CheckpointTuple]:
        for page in pages:
            yield from self._run_sync(page)

    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """An async method of an asyncio Checkpointer's saver, from another thread."""
        loop = self.loop
        if loop is None:
            coro.close()
            raise asyncio.InvalidStateError(
                "SidecarSaver's sync methods run on the Checkpointer's event loop: build the "
                "saver inside that loop (or pass loop=) before calling them from another "
                "thread, or give the saver a SyncCheckpointer"
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
                "aget_state...) there, call invoke() from a worker thread, or give the saver "
                "a SyncCheckpointer"
            )
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def _sync(self, flow: Flow[T]) -> T:
        if self._threaded:
            return self._run_sync(flow)
        return self._on_loop(self._run(flow))

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._sync(self.flows.get_tuple(self.serde, config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        pages = self.flows.list(self.serde, config, filter, before, limit)
        if self._threaded:
            return self._stream_sync(pages)

        async def collect() -> list[CheckpointTuple]:
            return [t async for t in self._stream(pages)]

        return iter(self._on_loop(collect()))

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._sync(self.flows.put(self.serde, config, checkpoint, metadata, new_versions))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._sync(self.flows.put_writes(self.serde, config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        self._sync(self.flows.delete_thread(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._sync(self.flows.delete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._sync(self.flows.copy_thread(source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._sync(self.flows.prune(thread_ids, strategy))
