"""A worker process for the lease scenarios: takes a run's lease, saves ``s0``, says so, then
waits for a line on stdin (the test freezes or kills it meanwhile) and tries to save ``s1``.

Exit codes: 0 the late save was accepted, 3 it was fenced out (LeaseLost), 4 anything else.
"""

from __future__ import annotations

import asyncio
import sys

from sidecar import CheckpointConfig, Checkpointer, LeaseLost, RunContext

PLAN = ["s0", "s1", "s2", "s3"]


async def main(url: str, user: str, run_id: str) -> int:
    cfg = CheckpointConfig(redis_url=url, lease_ttl_seconds=1, budget_ms=2000, strict=True)
    async with Checkpointer.from_url(url, config=cfg) as cp:
        try:
            async with cp.run(RunContext(user_id=user, run_id=run_id), plan=PLAN) as run:
                await run.step("s0", lambda: "worker s0")
                print(f"holding {run.fencing_token}", flush=True)
                await asyncio.to_thread(sys.stdin.readline)
                await run.step("s1", lambda: "worker s1 (late)")
                print("accepted", flush=True)
                return 0
        except LeaseLost:
            print("fenced", flush=True)
            return 3


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(*sys.argv[1:4])))
    except Exception as exc:
        print(f"error {type(exc).__name__}: {exc}", flush=True)
        sys.exit(4)
