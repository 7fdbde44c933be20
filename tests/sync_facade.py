"""The async API's shape over a SyncCheckpointer, so the core suite runs against both APIs
with the same test code: every sync call runs in a worker thread (asyncio.to_thread), and a
coroutine ``produce`` is run back on the test's event loop."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from sidecar import SyncCheckpointer, SyncCheckpointManager, SyncResumableRun


def _bridged(produce: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> Callable[[], Any]:
    def call() -> Any:
        result = produce()
        if inspect.isawaitable(result):
            return asyncio.run_coroutine_threadsafe(_awaited(result), loop).result()
        return result

    return call


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


class AsyncManager:
    """A SyncCheckpointManager whose verbs are awaited."""

    _VERBS = frozenset({
        "save_section", "load_section", "load_all_sections", "get_progress", "has_checkpoints",
        "get_checkpoint_age", "cleanup", "resume_view",
    })  # fmt: skip

    def __init__(self, sync: SyncCheckpointManager) -> None:
        self.sync = sync

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.sync, name)
        if name not in self._VERBS:
            return value

        async def verb(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(value, *args, **kwargs)

        return verb


class AsyncRun:
    """A SyncResumableRun used with ``async with`` and awaited steps."""

    def __init__(self, sync: SyncResumableRun) -> None:
        self.sync = sync

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.sync, name)
        if name in ("acquire", "save", "renew", "complete", "fail"):

            async def piece(*args: Any, **kwargs: Any) -> Any:
                return await asyncio.to_thread(value, *args, **kwargs)

            return piece
        return value

    async def __aenter__(self) -> AsyncRun:
        await asyncio.to_thread(self.sync.__enter__)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.to_thread(self.sync.__exit__, *exc)

    async def step(self, section: str, produce: Callable[[], Any], *, model: Any = None) -> Any:
        loop = asyncio.get_running_loop()
        return await asyncio.to_thread(
            self.sync.step, section, _bridged(produce, loop), model=model
        )


class AsyncFacade:
    """A SyncCheckpointer that looks like a Checkpointer to the tests."""

    def __init__(self, sync: SyncCheckpointer) -> None:
        self.sync = sync

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sync, name)

    def manager(self, ctx: Any) -> AsyncManager:
        return AsyncManager(self.sync.manager(ctx))

    def run(self, ctx: Any, plan: Any = None) -> AsyncRun:
        return AsyncRun(self.sync.run(ctx, plan))

    def attach(self, ctx: Any, **kwargs: Any) -> AsyncRun:
        return AsyncRun(self.sync.attach(ctx, **kwargs))

    async def connect(self, wait_s: float = 5.0) -> None:
        await asyncio.to_thread(self.sync.connect, wait_s)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.sync.close)
