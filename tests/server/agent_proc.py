"""A real agent process for the sidecar tests and the benchmark (run as a script).

    agent_proc.py URL PREFIX complete N   N runs of two steps each, completed (cleaned up)
    agent_proc.py URL PREFIX expire N     N runs with one saved section, left to expire (TTL 1 s)
    agent_proc.py URL PREFIX hold 1       one run held open (lease TTL 1 s) until killed
    agent_proc.py URL PREFIX open N       N saves to an unreachable URL: the circuit opens (and
                                          stays open: cooldown 1 h) until killed
    agent_proc.py URL PREFIX abandon N    N runs of one step that then fail: kept for a
                                          resume that never comes, they expire (TTL 1 s)

With ``PROMETHEUS_MULTIPROC_DIR`` set, the library's metrics go to that directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys

from sidecar import CheckpointConfig, Checkpointer, RunContext


async def main(url: str, prefix: str, mode: str, count: int) -> None:
    config = CheckpointConfig(
        redis_url=url, key_prefix=prefix, ttl_seconds=1, lease_ttl_seconds=1, budget_ms=2000
    )
    pid = os.getpid()
    if mode == "open":
        config = config.model_copy(update={"breaker_failures": 2, "breaker_cooldown_s": 3600.0})
    async with Checkpointer.from_url(url, config=config) as cp:
        for i in range(count):
            ctx = RunContext(user_id=f"user-{pid}", run_id=f"run-{i}")
            if mode == "complete":
                async with cp.run(ctx, plan=["intro", "body"]) as run:
                    await run.step("intro", lambda: "hello")
                    await run.step("body", lambda: {"n": 1})
            elif mode == "expire":
                assert await cp.manager(ctx).save_section("intro", "hello")
            elif mode == "open":
                assert not await cp.manager(ctx).save_section("intro", "hello")
            elif mode == "abandon":
                with contextlib.suppress(Abandoned):
                    async with cp.run(ctx, plan=["intro", "body"]) as run:
                        await run.step("intro", lambda: "hello")
                        raise Abandoned
            elif mode == "hold":
                async with cp.run(ctx, plan=["intro", "body"]) as run:
                    await run.step("intro", lambda: "hello")
                    print("holding", flush=True)
                    await asyncio.sleep(3600)  # killed here: the lease is never released
            else:
                raise SystemExit(f"unknown mode {mode!r}")
        if mode == "open":
            print("open", flush=True)
            await asyncio.sleep(3600)  # killed here, its circuit open
    print("done", flush=True)


class Abandoned(Exception):
    """The simulated failure that leaves a run for a resume that never comes."""


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
