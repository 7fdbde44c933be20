"""The one place that checks LangGraph is installed, with a message that names the extra."""

from __future__ import annotations


def require_langgraph() -> None:
    """Raise ImportError naming ``checkpoint-sidecar[langgraph]`` when LangGraph is missing."""
    try:
        import langgraph.checkpoint.base  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "sidecar.langgraph needs LangGraph's checkpoint package: "
            "pip install 'checkpoint-sidecar[langgraph]'"
        ) from exc
