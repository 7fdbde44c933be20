"""A real agent process for the sidecar tests and the benchmark (run as a script).

    agent_proc.py URL PREFIX complete N   N runs of two steps each, completed (cleaned up)
    agent_proc.py URL PREFIX expire N     N runs with one saved section, left to expire (TTL 1 s)
    agent_proc.py URL PREFIX hold 1       one run held open (lease TTL 1 s) until killed

With ``PROMETHEUS_MULTIPROC_DIR`` set, the library's metrics go to that directory.
"""

from __future__ import annotations

import asyncio
import os
import sys

from sidecar import CheckpointConfig, Checkpointer, RunContext


async def main(url: str, prefix: str, mode: str, count: int) -> None:
    config = CheckpointConfig(
        redis_url=url, key_prefix=prefix, ttl_seconds=1, lease_ttl_seconds=1, budget_ms=2000
    )
    pid = os.getpid()
    async with Checkpointer.from_url(url, config=config) as cp:
        for i in range(count):
            ctx = RunContext(user_id=f"user-{pid}", run_id=f"run-{i}")
            if mode == "complete":
                async with cp.run(ctx, plan=["intro", "body"]) as run:
                    await run.step("intro", lambda: "hello")
                    await run.step("body", lambda: {"n": 1})
            elif mode == "expire":
                assert await cp.manager(ctx).save_section("intro", "hello")
            elif mode == "hold":
                async with cp.run(ctx, plan=["intro", "body"]) as run:
                    await run.step("intro", lambda: "hello")
                    print("holding", flush=True)
                    await asyncio.sleep(3600)  # killed here: the lease is never released
            else:
                raise SystemExit(f"unknown mode {mode!r}")
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
