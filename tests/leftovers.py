"""What a completed run may leave behind: only its ``done`` key (the last fencing token, so a
stale attempt cannot recreate the run), and only with a TTL."""

from __future__ import annotations

from typing import Any


async def only_done_keys_left(client: Any) -> bool:
    """True when every key left is a ``:done`` key with a TTL (tests may use KEYS)."""
    for key in await client.keys("*"):
        name = key.decode() if isinstance(key, bytes) else str(key)
        if not name.endswith(":done") or await client.pttl(key) <= 0:
            return False
    return True
