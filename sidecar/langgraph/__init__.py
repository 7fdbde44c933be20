"""LangGraph checkpointer on plain Redis: ``SidecarSaver(checkpointer)``.

Needs the extra ``checkpoint-sidecar[langgraph]`` (``langgraph-checkpoint>=4.3,<5``).
"""

try:
    import langgraph.checkpoint.base  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "sidecar.langgraph needs LangGraph's checkpoint package: "
        "pip install 'checkpoint-sidecar[langgraph]'"
    ) from exc

from sidecar.langgraph.saver import SidecarSaver

__all__ = ["SidecarSaver"]
