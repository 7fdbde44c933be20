"""The baseline: the seed's ReportCheckpointManager, re-implemented faithfully (bench only).

Kept as the seed sketched it, defects included, because the benchmark measures them:

* one string key per section, ``SETEX`` with its own TTL;
* progress as a JSON string, updated by GET-then-SETEX (read-modify-write, not atomic);
* ``KEYS <pattern>`` to find, check and clean up a run (O(whole keyspace), blocks the server);
* one GET per section when loading all of them (1 + N round trips);
* an ``asyncio.Lock`` per manager object: two workers on one run are not coordinated;
* every failure swallowed into ``False`` / ``None`` / ``{}``.

The only changes: the seed's ``get_redis_manager()`` is a redis-py asyncio client passed in,
its logger is dropped, and ``datetime.utcnow()`` (deprecated) is spelled
``datetime.now(UTC).replace(tzinfo=None)``, which gives the same naive UTC value.
Never use this outside ``bench/``.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis


def _utcnow_iso() -> str:
    return datetime.now(UTC).replace(tzinfo=None).isoformat()


class NaiveCheckpointManager:
    """The seed's sketch. ``redis`` must decode responses (the seed splits key names)."""

    CHECKPOINT_TTL = 3600
    KEY_PREFIX = "report_checkpoint"

    def __init__(self, redis: aioredis.Redis, user_id: str, run_id: str) -> None:
        self.redis_manager = redis
        self.user_id = user_id
        self.run_id = run_id
        self._lock = asyncio.Lock()

    def _generate_key(self, section: str) -> str:
        return f"{self.KEY_PREFIX}:{self.user_id}:{self.run_id}:{section}"

    def _generate_progress_key(self) -> str:
        return f"{self.KEY_PREFIX}:progress:{self.user_id}:{self.run_id}"

    async def save_section(self, section: str, content: dict[str, Any]) -> bool:
        async with self._lock:
            try:
                checkpoint = {
                    "section": section,
                    "content": content,
                    "timestamp": _utcnow_iso(),
                    "user_id": self.user_id,
                    "run_id": self.run_id,
                }
                key = self._generate_key(section)
                await self.redis_manager.setex(key, self.CHECKPOINT_TTL, json.dumps(checkpoint))
                await self._update_progress(section, "completed")
                return True
            except Exception:
                return False

    async def load_section(self, section: str) -> dict[str, Any] | None:
        try:
            data = await self.redis_manager.get(self._generate_key(section))
            if data:
                content: dict[str, Any] = json.loads(data)["content"]
                return content
        except Exception:
            pass
        return None

    async def load_all_sections(self) -> dict[str, Any]:
        sections: dict[str, Any] = {}
        try:
            pattern = f"{self.KEY_PREFIX}:{self.user_id}:{self.run_id}:*"
            keys = await self.redis_manager.keys(pattern)
            for key in keys:
                section = key.split(":")[-1]
                content = await self.load_section(section)
                if content:
                    sections[section] = content
        except Exception:
            pass
        return sections

    async def get_progress(self) -> dict[str, Any]:
        try:
            data = await self.redis_manager.get(self._generate_progress_key())
            if data:
                progress: dict[str, Any] = json.loads(data)
                return progress
            return {
                "completed_sections": [],
                "in_progress": None,
                "total_sections": 0,
                "last_update": None,
            }
        except Exception:
            return {}

    async def _update_progress(self, section: str, status: str) -> None:
        try:
            progress = await self.get_progress()
            if status == "completed":
                if section not in progress["completed_sections"]:
                    progress["completed_sections"].append(section)
                if progress["in_progress"] == section:
                    progress["in_progress"] = None
            elif status == "in_progress":
                progress["in_progress"] = section
            progress["last_update"] = _utcnow_iso()
            await self.redis_manager.setex(
                self._generate_progress_key(), self.CHECKPOINT_TTL, json.dumps(progress)
            )
        except Exception:
            pass

    async def cleanup(self) -> bool:
        try:
            pattern = f"{self.KEY_PREFIX}:{self.user_id}:{self.run_id}:*"
            keys = await self.redis_manager.keys(pattern)
            keys.append(self._generate_progress_key())
            if keys:
                await self.redis_manager.delete(*keys)
            return True
        except Exception:
            return False

    async def has_checkpoints(self) -> bool:
        try:
            pattern = f"{self.KEY_PREFIX}:{self.user_id}:{self.run_id}:*"
            keys = await self.redis_manager.keys(pattern)
            return len(keys) > 0
        except Exception:
            return False

    async def get_checkpoint_age(self) -> float | None:
        try:
            progress = await self.get_progress()
            if progress.get("last_update"):
                last_update = datetime.fromisoformat(progress["last_update"])
                now = datetime.now(UTC).replace(tzinfo=None)
                return (now - last_update).total_seconds()
        except Exception:
            pass
        return None
