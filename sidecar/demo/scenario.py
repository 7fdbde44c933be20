"""What happens to each demo run: its failure plan, drawn reproducibly from ``--seed``.

Kinds of run (shares of ``--runs``; each failing kind gets at least one run when there are
enough runs, so a small demo still shows every behaviour):

=========  =====  ==========================================================================
clean      rest   four sections, no failure
crash      25 %   the worker crashes after k sections (k = 1..3); the retry resumes
timeout    20 %   the LLM hangs on section k (k = 0..3); the agent's LLM timeout fires; retry
double      5 %   a crash, then an LLM timeout on the retry, then a third attempt finishes
abandoned  15 %   crashes after k sections and is never retried: its checkpoints expire (TTL)
=========  =====  ==========================================================================
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any, Literal

from sidecar.demo.reporting_agent import SECTIONS, Context, SimulatedLLM

Kind = Literal["clean", "crash", "timeout", "double", "abandoned"]
Fault = tuple[Literal["crash", "hang"], int]  # what breaks, and at which section index

SHARES: dict[Kind, float] = {"crash": 0.25, "timeout": 0.20, "double": 0.05, "abandoned": 0.15}


class WorkerCrash(Exception):
    """A simulated worker crash between two sections (the process would die here)."""


@dataclass(frozen=True, slots=True)
class RunPlan:
    """One run of the demo: who, which failures on which attempt, and its own random seed."""

    index: int
    kind: Kind
    faults: dict[int, Fault]  # attempt number (1-based) -> fault
    seed: str

    @property
    def user_id(self) -> str:
        return f"user-{self.index % 7:02d}"

    @property
    def run_id(self) -> str:
        return f"report-{self.index:03d}"

    @property
    def label(self) -> str:
        return f"{self.user_id}/{self.run_id}"

    @property
    def retried(self) -> bool:
        return self.kind != "abandoned"


def _counts(runs: int) -> dict[Kind, int]:
    counts: dict[Kind, int] = {}
    left = runs
    for kind, share in SHARES.items():
        want = round(share * runs)
        if kind != "double" and runs >= 4:
            want = max(want, 1)
        counts[kind] = min(want, left)
        left -= counts[kind]
    counts["clean"] = left
    return counts


def plan_runs(runs: int, seed: int) -> list[RunPlan]:
    """The plans of ``runs`` runs; the same ``seed`` always gives the same plans."""
    rng = random.Random(seed)
    kinds: list[Kind] = [kind for kind, n in _counts(runs).items() for _ in range(n)]
    rng.shuffle(kinds)
    plans = []
    for index, kind in enumerate(kinds):
        faults: dict[int, Fault] = {}
        if kind in ("crash", "abandoned", "double"):
            faults[1] = ("crash", rng.randint(1, len(SECTIONS) - 1))
        if kind == "timeout":
            faults[1] = ("hang", rng.randint(0, len(SECTIONS) - 1))
        if kind == "double":
            faults[2] = ("hang", len(SECTIONS) - 1)
        plans.append(RunPlan(index, kind, faults, f"{seed}-{index}"))
    return plans


class FaultyLLM(SimulatedLLM):
    """The simulated LLM with the run's planned faults; counts the LLM time it spends."""

    def __init__(self, plan: RunPlan) -> None:
        super().__init__(random.Random(plan.seed))
        self.plan = plan
        self.attempt = 1
        self.spent_s = 0.0

    async def generate(self, section: str, context: Context) -> dict[str, Any]:
        fault = self.plan.faults.get(self.attempt)
        if fault is not None and SECTIONS.index(section) == fault[1]:
            if fault[0] == "crash":
                done = f"{fault[1]} section" + ("s" if fault[1] != 1 else "")
                raise WorkerCrash(f"worker crashed after {done}")
            await asyncio.sleep(3600)  # the LLM hangs; the agent's timeout cancels this
        result = await super().generate(section, context)
        self.spent_s += float(result["llm_seconds"])
        return result
