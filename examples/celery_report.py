"""The seed's report agent as a Celery task that survives its worker dying mid-task.

A worker that is SIGKILLed, OOM-killed or loses its node in the middle of a report never
acknowledges the task message (``acks_late``), so the broker gives the task to another worker;
that worker restores the sections the dead one had checkpointed and produces only the rest::

    worker 1:  summary ✓ saved   data_analysis ✓ saved   recommendations …  ✗ SIGKILL
    worker 2:  (lease of worker 1 still held: retry in 2.1 s)
    worker 2:  summary ↺ restored  data_analysis ↺ restored  recommendations ✓  action_items ✓
               → {'success': True, 'checkpoints_used': True, 'resumed_sections': 2, ...}

Run it (broker, result backend and checkpoints on one Redis or Valkey)::

    export CELERY_BROKER_URL=redis://127.0.0.1:6379/0 SIDECAR_REDIS_URL=redis://127.0.0.1:6379/0
    celery -A examples.celery_report worker -Q reports --loglevel=INFO
    python -c "from examples.celery_report import write_report; \\
               print(write_report.delay('user-42', 'report-1').get(timeout=60))"

What to keep when you copy it:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: the message is acknowledged after the
  task ends, so a dead worker's task is delivered again (a killed pool process's as soon as
  the pool notices; a whole worker's once the transport's ``visibility_timeout`` has passed,
  which must stay above your longest report plus the lease TTL, or a task that is still
  running is delivered twice);
* one :class:`~sidecar.SyncCheckpointer` per worker process (:func:`checkpointer`), shared by
  every task it runs, built after the fork and closed at shutdown;
* one ``cp.run(ctx, plan=...)`` per attempt: the lease keeps two deliveries of one report from
  interleaving. A worker killed while holding it leaves it until ``lease_ttl_seconds``; the
  next delivery gets :class:`~sidecar.LeaseHeld` and retries after ``retry_after_ms``;
* a check of the result backend first: a worker that died after storing the result but before
  acknowledging the message leaves a finished report, which is returned, not paid for again.

Replace :class:`SimulatedLLM` with your model client, or name a factory in
``CELERY_REPORT_LLM=package.module:factory`` (the test plugs a recording stand-in in that way).
"""

from __future__ import annotations

import importlib
import os
import random
import threading
import time
from functools import partial
from typing import Any, Protocol

from celery import Celery, Task
from celery.signals import worker_process_shutdown, worker_shutdown
from celery.utils.log import get_task_logger

from sidecar import (
    CheckpointConfig,
    CheckpointTimeout,
    CheckpointUnavailable,
    LeaseHeld,
    RunContext,
    SyncCheckpointer,
)

SECTIONS = ("summary", "data_analysis", "recommendations", "action_items")
QUEUE = "reports"
LEASE_RETRIES = 60  # each waits out the holder's lease: a live holder renews it until it ends

logger = get_task_logger(__name__)  # lines carry the task name and id in the worker log


# A message unacknowledged this long is given to another worker (Celery's default: 1 hour).
# Keep it above the longest report plus the lease TTL, or a running task is delivered twice.
VISIBILITY_TIMEOUT_S = float(os.environ.get("REPORT_VISIBILITY_TIMEOUT_S", "3600"))


def _settings() -> dict[str, Any]:
    """Celery settings from the environment: broker, results and checkpoints on one Redis."""
    default = os.environ.get("SIDECAR_REDIS_URL", "redis://127.0.0.1:6379/0")
    broker = os.environ.get("CELERY_BROKER_URL", default)
    return {
        "broker_url": broker,
        "result_backend": os.environ.get("CELERY_RESULT_BACKEND", broker),
        "task_default_queue": QUEUE,
        "task_acks_late": True,  # acknowledge after the task ends, not when it starts
        "task_reject_on_worker_lost": True,  # a killed pool process's task is requeued
        "worker_prefetch_multiplier": 1,  # a worker holds one unacknowledged report at a time
        "broker_transport_options": {
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            # how often a worker looks for such messages (kombu's default: every 100 s)
            "unacked_restore_interval": max(1, min(10, int(VISIBILITY_TIMEOUT_S // 2))),
            "unacked_restore_throttle": 1,
        },
        "broker_connection_retry_on_startup": True,
        "result_expires": 24 * 3600,
    }


app = Celery("celery_report")
app.conf.update(_settings())


# --- one SyncCheckpointer per worker process ---------------------------------------------------

_lock = threading.Lock()
_cp: SyncCheckpointer | None = None
_cp_pid = 0


def checkpointer() -> SyncCheckpointer:
    """This process's checkpointer, built on first use (after a prefork worker's fork: a
    connection pool must never be shared across processes) from ``SIDECAR_*`` settings."""
    global _cp, _cp_pid
    with _lock:
        if _cp is None or _cp_pid != os.getpid():
            config = CheckpointConfig()  # SIDECAR_REDIS_URL, SIDECAR_LEASE_TTL_SECONDS, ...
            cp = SyncCheckpointer.from_url(config.redis_url, config=config)
            try:
                cp.connect(wait_s=5.0)  # pay the connection once, outside any call's budget
            except (CheckpointUnavailable, CheckpointTimeout) as error:
                # best effort: reports still run (without checkpoints) while Redis is away
                logger.warning("checkpoints unavailable for now: %s", error)
            _cp, _cp_pid = cp, os.getpid()
        return _cp


@worker_process_shutdown.connect
@worker_shutdown.connect
def _close_checkpointer(**_: Any) -> None:
    global _cp
    with _lock:
        if _cp is not None and _cp_pid == os.getpid():
            _cp.close()
        _cp = None


# --- the agent -------------------------------------------------------------------------------


class LLM(Protocol):
    def generate(self, section: str, context: RunContext) -> dict[str, Any]: ...


class SimulatedLLM:
    """Stands in for a model client: sleeps a realistic (scaled-down) time, returns a section."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def generate(self, section: str, context: RunContext) -> dict[str, Any]:
        seconds = self.rng.uniform(0.05, 0.3)
        time.sleep(seconds)
        words = self.rng.choices(_VOCABULARY.split(), k=300)
        return {
            "title": section.replace("_", " ").title(),
            "body": " ".join(words).capitalize() + ".",
            "llm_seconds": round(seconds, 4),
        }


def llm() -> LLM:
    """The model client: ``CELERY_REPORT_LLM=package.module:factory``, else the simulation."""
    spec = os.environ.get("CELERY_REPORT_LLM", "")
    if not spec:
        return SimulatedLLM()
    module, _, name = spec.partition(":")
    factory = getattr(importlib.import_module(module), name)
    made: LLM = factory()
    return made


def write_sections(cp: SyncCheckpointer, model: LLM, context: RunContext) -> dict[str, Any]:
    """One attempt: restore what an earlier attempt checkpointed, produce the rest.

    Leaving the block normally deletes the run's checkpoints; an exception (or the process
    dying) keeps them for the next attempt. Raises :class:`LeaseHeld` while another attempt
    holds the run.
    """
    with cp.run(context, plan=SECTIONS) as run:
        if run.resumed:
            logger.info("Resumed from %d checkpoints: %s", len(run.restored), list(run.restored))
        for name in SECTIONS:
            if name in run.remaining:
                logger.info("Generating %s...", name)
            run.step(name, partial(model.generate, name, context))
    return run.result()  # {'success', 'report', 'checkpoints_used', 'resumed_sections'}


def _finished_result(task: Task) -> dict[str, Any] | None:
    """The result an earlier delivery of this very task stored (it died before the ack)."""
    meta = task.backend.get_task_meta(task.request.id)
    if meta.get("status") == "SUCCESS":
        stored: dict[str, Any] = meta["result"]
        return stored
    return None


@app.task(bind=True, name="reports.write_report", max_retries=LEASE_RETRIES)
def write_report(self: Task, user_id: str, run_id: str) -> dict[str, Any]:
    """Write one report; a redelivered task resumes from the checkpoints of the dead one."""
    finished = _finished_result(self)
    if finished is not None:
        logger.info("run %s already finished by an earlier delivery", run_id)
        return finished
    context = RunContext(user_id=user_id, run_id=run_id)
    try:
        return write_sections(checkpointer(), llm(), context)
    except LeaseHeld as held:
        # another delivery runs this report, or a killed worker's lease has not expired yet.
        # A retry waiting longer than the visibility timeout would be delivered twice (its
        # message stays unacknowledged meanwhile): then retry earlier, and maybe again.
        wait_s = max(held.retry_after_ms, 100) / 1000 + random.uniform(0, 0.2)
        countdown = min(wait_s, VISIBILITY_TIMEOUT_S / 2)
        logger.info("run %s: lease held, retry in %.1f s", run_id, countdown)
        raise self.retry(countdown=countdown, exc=held) from held


_VOCABULARY = (
    "revenue growth churn cohort latency margin quarter forecast pipeline region segment "
    "retention anomaly baseline variance conversion funnel uplift seasonality customers "
    "incident throughput capacity budget risk milestone owner deadline priority metric"
)
