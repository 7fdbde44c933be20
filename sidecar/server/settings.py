"""The library's settings as the command line sees them: one ``CheckpointConfig`` for every
subcommand.

A flag wins over its ``SIDECAR_*`` variable, which wins over the library's default — the same
precedence as the library itself, because it *is* the library's settings object. So an operator
who sets ``SIDECAR_BUDGET_MS=250`` for the agents gets dashboards and alerts drawn for 250 ms
without repeating it. A bad value becomes one line naming the flag or variable it came from.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from sidecar.config import CheckpointConfig

DEFAULT_BUDGET_MS: float = CheckpointConfig.model_fields["budget_ms"].default


def library_config(**flags: Any) -> CheckpointConfig:
    """``CheckpointConfig`` from the flags given (``None``: not given), then ``SIDECAR_*``.

    Raises ``ValueError`` with one line, e.g. ``invalid SIDECAR_BUDGET_MS: Input should be
    greater than 0``.
    """
    given = {name: value for name, value in flags.items() if value is not None}
    try:
        return CheckpointConfig(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "settings"
        source = f"--{field.replace('_', '-')}" if field in given else f"SIDECAR_{field.upper()}"
        raise ValueError(f"invalid {source}: {error['msg']}") from None


def budget_help(what: str = "overhead budget of one checkpoint call, in ms") -> str:
    """Help text of a ``--budget-ms`` flag that defaults to the library's setting."""
    return f"{what} (default: $SIDECAR_BUDGET_MS, else {DEFAULT_BUDGET_MS:g})"
