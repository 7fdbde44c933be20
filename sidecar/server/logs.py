"""Log set-up of the sidecar process: one line per record, ``extra`` fields as ``key=value``."""

from __future__ import annotations

import logging
import sys
from typing import Final

_STANDARD: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "color_message", "taskName"}
)


class KeyValueFormatter(logging.Formatter):
    """``time level logger message key=value ...`` with the record's ``extra`` fields."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{k}={v!r}" for k, v in record.__dict__.items() if k not in _STANDARD]
        return f"{line} {' '.join(extras)}" if extras else line


def configure_logging(level: str) -> None:
    """Log to stderr at ``level`` (our loggers); uvicorn's own loggers stay at warning."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("sidecar").setLevel(level.upper())
