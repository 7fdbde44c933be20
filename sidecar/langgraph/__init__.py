"""LangGraph checkpointer on plain Redis: ``from sidecar.langgraph import SidecarSaver``.

Needs the extra ``checkpoint-sidecar[langgraph]`` (``langgraph-checkpoint>=4.3,<5``): importing
``SidecarSaver`` without it raises an ImportError that names the extra. The key layout,
:mod:`sidecar.langgraph.keys`, needs nothing but this library, so the sidecar's expiry watcher
can decode thread keys without LangGraph installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sidecar.langgraph.saver import SidecarSaver

__all__ = ["SidecarSaver"]


def __getattr__(name: str) -> Any:
    if name == "SidecarSaver":
        from sidecar.langgraph._extra import require_langgraph

        require_langgraph()
        from sidecar.langgraph.saver import SidecarSaver

        return SidecarSaver
    raise AttributeError(f"module 'sidecar.langgraph' has no attribute {name!r}")
