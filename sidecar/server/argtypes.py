"""argparse value types shared by the command lines: a number, parsed and range-checked, whose
error message names what was expected (argparse shows it on the one error line)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

N = TypeVar("N", int, float)


def bounded(
    parse: Callable[[str], N],
    what: str,
    low: N,
    high: N | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], N]:
    """A type for ``add_argument(type=...)``: ``parse`` the text and require it in range."""
    lower = f"> {low}" if low_open else f">= {low}"
    upper = "" if high is None else (f" and < {high}" if high_open else f" and <= {high}")

    def convert(text: str) -> N:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        too_low = value <= low if low_open else value < low
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be {lower}{upper}, got {text}")
        return value

    convert.__name__ = what.replace(" ", "_")
    return convert


port = bounded(int, "a port number", 0, 65535)
positive = bounded(float, "a number", 0.0, low_open=True)
ratio = bounded(float, "a ratio such as 0.99", 0.0, 1.0, low_open=True, high_open=True)
