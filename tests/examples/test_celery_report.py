"""examples/celery_report.py with real Celery workers on a private Valkey (broker, results and
checkpoints): a worker SIGKILLed in the middle of a report, and the next one resuming it.

The workers are ``celery -A examples.celery_report worker`` subprocesses whose model client is
:mod:`recording_llm`, which logs every call per run as (worker, section) and waits while the
test holds a section, so the kill lands in the middle of that section.

The kill tests use the prefork pool: with ``--pool=solo`` the task blocks the worker's event
loop, so even an *early* acknowledgement reaches Redis only after the task (measured here: the
message stays in ``unacked`` while the task runs), and the test could not tell ``acks_late``
from the default.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from celery.states import READY_STATES
from recording_llm import hold_key, recorded_calls

from sidecar import CheckpointConfig, RunContext, SyncCheckpointer
from sidecar.keys import run_keys
from sidecar.server.embedded import EmbeddedServer, stop_process

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TASK = "reports.write_report"
QUEUE = "reports"
SECTIONS = ["summary", "data_analysis", "recommendations", "action_items"]
PREFIX = "ckpt-celery"
LEASE_TTL_S = 3  # a killed worker's lease outlives it by up to this long
VISIBILITY_TIMEOUT_S = 5  # an unacknowledged task is redelivered after this long: above the
# longest task here plus the lease TTL, as docs/sync.md says (else a retry waiting for the
# lease is delivered twice)
ALREADY_FINISHED = "already finished by an earlier delivery"  # the example's log line
CONFIG = CheckpointConfig(key_prefix=PREFIX, lease_ttl_seconds=LEASE_TTL_S, budget_ms=1000)


def _worker_env(url: str, name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "CELERY_"))}
    path = [str(ROOT), str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]
    env.update(
        PYTHONPATH=os.pathsep.join(path),
        PYTHONUNBUFFERED="1",
        CELERY_BROKER_URL=url,
        CELERY_RESULT_BACKEND=url,
        REPORT_VISIBILITY_TIMEOUT_S=str(VISIBILITY_TIMEOUT_S),
        SIDECAR_REDIS_URL=url,
        SIDECAR_KEY_PREFIX=PREFIX,
        SIDECAR_LEASE_TTL_SECONDS=str(LEASE_TTL_S),
        SIDECAR_BUDGET_MS="1000",  # a loaded shared CI machine
        CELERY_REPORT_LLM="recording_llm:shared",
        RECORDING_LLM_URL=url,
        RECORDING_LLM_WORKER=name,
    )
    return env


class Worker:
    """One ``celery worker`` process, its output in a file (never an unread PIPE)."""

    def __init__(self, tmp_path: Path, url: str, name: str, pool: str) -> None:
        self.name = name
        self.log = tmp_path / f"{name}.log"
        command = [
            sys.executable, "-m", "celery", "-A", "examples.celery_report", "worker",
            f"--pool={pool}", "--concurrency=1", "-Q", QUEUE, "-n", f"{name}@%h",
            "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(
                command, cwd=ROOT, env=_worker_env(url, name), stdin=subprocess.DEVNULL,
                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.group = self.proc.pid  # its own process group: the worker and its pool children

    def output(self) -> str:
        return f"--- {self.name} ---\n{self.log.read_text(errors='replace')}"

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children), as a lost node would:
        no shutdown handler runs, the unacknowledged task stays with the broker."""
        os.killpg(self.group, signal.SIGKILL)
        self.proc.wait(10)
        deadline = time.monotonic() + 10
        while _group_alive(self.group):  # the pool child is reaped by init, not by us
            assert time.monotonic() < deadline, f"{self.name}: a pool process survived SIGKILL"
            time.sleep(0.02)

    def pool_children(self) -> list[int]:
        """Pids of the worker's pool processes (children of its main process)."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def stop(self) -> None:
        stop_process(self.proc, timeout=10)
        if _group_alive(self.group):  # a pool child its main process left behind
            os.killpg(self.group, signal.SIGKILL)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def running(tmp_path: Path, url: str, name: str, pool: str = "prefork") -> Iterator[Worker]:
    worker = Worker(tmp_path, url, name, pool)
    try:
        yield worker
    finally:
        worker.stop()


@contextmanager
def celery_client(url: str) -> Iterator[Celery]:
    """A producer that knows the task by name only, as a web app would; closed on exit."""
    client = Celery("producer", broker=url, backend=url)
    client.conf.task_default_queue = QUEUE
    try:
        yield client
    finally:
        client.backend.client.close()
        client.close()


def wait_for(what: str, check: Callable[[], bool], workers: list[Worker], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        dead = [w for w in workers if w.proc.poll() is not None]
        if dead or time.monotonic() > deadline:
            logs = "\n".join(w.output() for w in workers)
            raise AssertionError(f"gave up waiting for {what}\n{logs}")
        time.sleep(0.05)


def task_meta(client: Celery, task_id: str) -> dict[str, Any]:
    meta: dict[str, Any] = client.backend.get_task_meta(task_id)
    return meta


def wait_result(client: Celery, task_id: str, worker: Worker, timeout: float = 40) -> Any:
    """The task's result once it is ready (polled: no result consumer left open)."""
    wait_for("the task result", lambda: task_meta(client, task_id)["status"] in READY_STATES,
             [worker], timeout)  # fmt: skip
    meta = task_meta(client, task_id)
    assert meta["status"] == "SUCCESS", (meta, worker.output())
    return meta["result"]


def _run_is_gone(r: redis.Redis, cp: SyncCheckpointer, ctx: RunContext) -> None:
    keys = run_keys(PREFIX, ctx.user_id, ctx.run_id)
    assert r.exists(keys.sections, keys.meta, keys.lease) == 0
    assert cp.manager(ctx).load_all_sections() == {}


def wait_mid_third_section(
    r: redis.Redis, cp: SyncCheckpointer, ctx: RunContext, worker: Worker
) -> None:
    """Until two sections are checkpointed and the worker is inside the LLM call of the third."""

    def two_saved_third_started() -> bool:
        done = cp.manager(ctx).get_progress().completed_sections
        started = (worker.name, "recommendations") in recorded_calls(r, ctx.run_id)
        return done == SECTIONS[:2] and started

    wait_for("two checkpoints and the third section started", two_saved_third_started,
             [worker], timeout=30)  # fmt: skip


def test_a_worker_killed_mid_report_is_resumed_by_the_next(
    private_server: EmbeddedServer, tmp_path: Path
) -> None:
    url = private_server.url
    ctx = RunContext(user_id="user-42", run_id=f"report-{uuid.uuid4().hex[:8]}")
    with (
        redis.Redis.from_url(url) as r,
        SyncCheckpointer.from_url(url, config=CONFIG) as cp,
        celery_client(url) as client,
    ):
        r.set(hold_key(ctx.run_id, "recommendations"), 1)  # worker 1 will hang in section 3
        task = client.send_task(TASK, args=[ctx.user_id, ctx.run_id], queue=QUEUE)

        with running(tmp_path, url, "worker-1") as first:
            wait_mid_third_section(r, cp, ctx, first)
            first.kill()
        assert task_meta(client, task.id)["status"] not in READY_STATES
        r.delete(hold_key(ctx.run_id, "recommendations"))

        with running(tmp_path, url, "worker-2") as second:
            result = wait_result(client, task.id, second)
            calls = recorded_calls(r, ctx.run_id)
            logs = first.output() + second.output()

        assert result["success"] is True, logs
        assert list(result["report"]) == SECTIONS
        # sections 1-2 were produced once, by the killed worker, and restored by the next one
        assert calls == [
            ("worker-1", "summary"),
            ("worker-1", "data_analysis"),
            ("worker-1", "recommendations"),  # killed in the middle of it
            ("worker-2", "recommendations"),
            ("worker-2", "action_items"),
        ], logs
        assert [result["report"][s]["worker"] for s in SECTIONS] == [
            "worker-1", "worker-1", "worker-2", "worker-2",
        ]  # fmt: skip
        assert result["checkpoints_used"] is True
        assert result["resumed_sections"] == 2
        _run_is_gone(r, cp, ctx)


def test_a_pool_process_killed_mid_report_is_resumed_by_its_replacement(
    private_server: EmbeddedServer, tmp_path: Path
) -> None:
    """The OOM killer's choice: the pool process dies, the worker lives. The task is requeued
    at once (``task_reject_on_worker_lost``), not recorded as failed, and resumes."""
    url = private_server.url
    ctx = RunContext(user_id="user-9", run_id=f"report-{uuid.uuid4().hex[:8]}")
    with (
        redis.Redis.from_url(url) as r,
        SyncCheckpointer.from_url(url, config=CONFIG) as cp,
        celery_client(url) as client,
        running(tmp_path, url, "worker-1") as worker,
    ):
        r.set(hold_key(ctx.run_id, "recommendations"), 1)
        task = client.send_task(TASK, args=[ctx.user_id, ctx.run_id], queue=QUEUE)
        wait_mid_third_section(r, cp, ctx, worker)
        (child,) = worker.pool_children()
        os.kill(child, signal.SIGKILL)
        r.delete(hold_key(ctx.run_id, "recommendations"))

        result = wait_result(client, task.id, worker)
        assert worker.pool_children() != [child]
        assert result["success"] is True
        assert result["resumed_sections"] == 2
        assert recorded_calls(r, ctx.run_id) == [
            ("worker-1", "summary"),
            ("worker-1", "data_analysis"),
            ("worker-1", "recommendations"),  # the killed pool process
            ("worker-1", "recommendations"),  # its replacement
            ("worker-1", "action_items"),
        ], worker.output()
        _run_is_gone(r, cp, ctx)


class _GiveUp(Exception):
    """Leaves a run by an exception: its checkpoints stay, its lease is released."""


def test_a_held_lease_is_waited_for_and_a_finished_task_is_not_redone(
    private_server: EmbeddedServer, tmp_path: Path
) -> None:
    url = private_server.url
    ctx = RunContext(user_id="user-7", run_id=f"report-{uuid.uuid4().hex[:8]}")
    with (
        redis.Redis.from_url(url) as r,
        SyncCheckpointer.from_url(url, config=CONFIG) as cp,
        celery_client(url) as client,
        running(tmp_path, url, "worker-1", pool="solo") as worker,
    ):
        # another attempt (this test) holds the run and has finished its first section
        try:
            with cp.run(ctx, plan=SECTIONS) as run:
                run.step("summary", lambda: {"title": "Summary", "worker": "test"})
                task = client.send_task(TASK, args=[ctx.user_id, ctx.run_id], queue=QUEUE)
                wait_for("the task to retry on the held lease",
                         lambda: task_meta(client, task.id)["status"] == "RETRY",
                         [worker], timeout=30)  # fmt: skip
                raise _GiveUp
        except _GiveUp:
            pass
        assert recorded_calls(r, ctx.run_id) == []  # it waited, it did not interleave

        result = wait_result(client, task.id, worker)
        assert result["success"] is True
        assert result["resumed_sections"] == 1
        assert result["report"]["summary"]["worker"] == "test"
        assert recorded_calls(r, ctx.run_id) == [
            ("worker-1", "data_analysis"),
            ("worker-1", "recommendations"),
            ("worker-1", "action_items"),
        ]
        _run_is_gone(r, cp, ctx)

        # the same task delivered again (its worker died after storing the result, before the
        # ack): the stored report is returned, no section is produced again
        seen = worker.output().count(ALREADY_FINISHED)
        client.send_task(TASK, args=[ctx.user_id, ctx.run_id], queue=QUEUE, task_id=task.id)
        wait_for("the duplicate delivery",
                 lambda: worker.output().count(ALREADY_FINISHED) > seen,
                 [worker], timeout=30)  # fmt: skip
        assert len(recorded_calls(r, ctx.run_id)) == 3
        assert task_meta(client, task.id)["result"] == result
        _run_is_gone(r, cp, ctx)
