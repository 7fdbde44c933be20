"""Dead agent processes leave no stale gauges: ``mark_process_dead`` for every pid that is gone.

In multiprocess mode each agent process writes its metrics into files named after its pid.
Counters and histograms of a process that exited must stay (the totals would go backwards
otherwise), but its *live* gauges must go: ``checkpoint_circuit_open`` of an agent killed with
its circuit open would stay 1 in the merged output, and the critical alert fire, until the pod
restarts. prometheus_client's :func:`~prometheus_client.multiprocess.mark_process_dead` removes
exactly those files (``gauge_live*_<pid>.db``); the library's gauges use ``livemax``.

A pid is gone when the sidecar cannot see it (``/proc/<pid>`` absent, or a zombie). That needs
the agents' processes to be visible: in Kubernetes, ``shareProcessNamespace: true`` in the pod.
Without it every agent pid looks gone, so a guard applies: pids are only reaped while at least
one *other* pid of the directory is seen alive (proof that the namespace is shared). Pid 1 and
the sidecar's own pid prove nothing (in a container of its own the sidecar is often pid 1, and
an agent in its own container may be too), and are never reaped. The directory must be
writable from the sidecar (files are removed); a read-only mount is reported once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from pathlib import Path
from typing import Final

from prometheus_client.multiprocess import mark_process_dead

log = logging.getLogger("sidecar.server")

_FILE_RE: Final = re.compile(r"^(?P<kind>[a-z_]+?)_(?P<pid>\d+)\.db$")


def pid_state(pid: int) -> str:
    """``"alive"``, ``"gone"`` (no such process, or a zombie) for a pid of this namespace."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        return "alive"  # exists, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "alive"
    state = stat.rpartition(")")[2].split()[:1]
    return "gone" if state in (["Z"], ["X"]) else "alive"


class DeadAgentReaper:
    """Every ``interval`` seconds, ``mark_process_dead`` the pids of ``directory`` that are gone."""

    def __init__(self, directory: str | Path, interval: float = 5.0) -> None:
        self.directory = Path(directory)
        self.interval = interval
        self.reaped = 0  # processes whose live gauges were dropped
        self._done: set[int] = set()
        self._warned = False
        self._warned_unwritable = False

    def sweep(self) -> list[int]:
        """One pass; returns the pids reaped now."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        pids: set[int] = set()
        live_gauges: set[int] = set()
        for name in names:
            match = _FILE_RE.match(name)
            if match is None:
                continue
            pid = int(match["pid"])
            pids.add(pid)
            if match["kind"].startswith("gauge_live"):
                live_gauges.add(pid)
        uninformative = {1, os.getpid()}
        states = {pid: pid_state(pid) for pid in pids - uninformative}
        if not any(state == "alive" for state in states.values()):
            self._warn_blind(states)
            return []
        reaped = []
        for pid in sorted(live_gauges - uninformative - self._done):
            if states.get(pid) == "gone":
                try:
                    mark_process_dead(pid, str(self.directory))  # type: ignore[no-untyped-call]
                except OSError as exc:  # a read-only mount: say so once, retry next pass
                    self._warn_unwritable(exc)
                    continue
                self._done.add(pid)
                reaped.append(pid)
        self._done &= pids  # a pid number reused later is judged afresh
        if reaped:
            self.reaped += len(reaped)
            log.info(
                "dropped the live gauges of %d agent process(es) that are gone: %s",
                len(reaped), ", ".join(map(str, reaped)), extra={"pids": reaped},
            )  # fmt: skip
        return reaped

    def _warn_unwritable(self, exc: OSError) -> None:
        if not self._warned_unwritable:
            self._warned_unwritable = True
            log.warning(
                "cannot drop a dead agent's live gauges in %s (%s): mount it writable in the "
                "sidecar", self.directory, exc.strerror or exc,
            )  # fmt: skip

    def _warn_blind(self, states: dict[int, str]) -> None:
        if states and not self._warned:
            self._warned = True
            log.warning(
                "no agent process of %s is visible from the sidecar: live gauges of dead "
                "agents cannot be dropped (in Kubernetes set shareProcessNamespace: true)",
                self.directory,
            )

    async def run(self) -> None:
        """Sweep until cancelled."""
        while True:
            try:
                self.sweep()
            except OSError as exc:  # a file removed under us: next pass
                log.debug("multiprocess sweep: %s", exc)
            await asyncio.sleep(self.interval)
