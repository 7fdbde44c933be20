"""``checkpoint-sidecar demo``: many reporting agents failing and resuming, with live metrics.

The command line calls exactly two names: :func:`add_arguments` adds the demo's options to a
parser, :func:`run` runs the demo and returns the process exit code. The agent it drives is
``examples/reporting_agent.py`` (shipped here as :mod:`sidecar.demo.reporting_agent`).
"""

from sidecar.demo.cli import add_arguments, run

__all__ = ["add_arguments", "run"]
