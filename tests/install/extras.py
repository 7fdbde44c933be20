"""What each documented install line must be enough for: README names these lines, and
check_extras.py runs every command below in a fresh virtualenv holding exactly that install.

A command is a list of arguments to ``checkpoint-sidecar`` (or ``python -c`` code); ``serve``
entries are started, probed on /healthz and stopped with SIGTERM.
"""

from __future__ import annotations

INSTALL_LINES: dict[str, list[list[str]]] = {
    # the library alone: agents import it; the CLI answers, and says which extra a command needs
    "checkpoint-sidecar": [
        ["python", "-c", "import sidecar; sidecar.Checkpointer; sidecar.CheckpointConfig()"],
        ["--help"],
    ],
    # the sidecar process, and the alert rules / PrometheusRule it can write
    "checkpoint-sidecar[server]": [
        ["serve", "--help"],
        ["alerts", "--out", "rules.yml"],
        ["alerts", "--out", "-"],
        ["alerts", "--format", "prometheusrule", "--out", "-"],
    ],
    # dashboards (and alerts)
    "checkpoint-sidecar[dashboards]": [
        ["dashboards", "--out", "dashboards"],
        ["dashboards", "--out", "-", "--only", "checkpoint-overview"],
        ["alerts", "--out", "rules.yml"],
    ],
    # the sidecar with a private Valkey, and the demo (what `make demo` installs)
    "checkpoint-sidecar[embedded,server]": [
        ["serve", "--embedded", "--port", "0"],
        ["demo", "--runs", "4", "--plain", "--port", "0"],
    ],
    # sections stored compressed and encrypted (the library's codecs, no CLI command of its own)
    "checkpoint-sidecar[zstd,encryption]": [
        [
            "python",
            "-c",
            "from sidecar import seal; import zstandard, cryptography; "
            "from sidecar import CheckpointConfig as C; "
            "assert C(encryption_keys=['k1:' + 'A' * 43 + '=']).compression == 'zstd'",
        ],
    ],
}

# A command that must FAIL with the bare install, with one line naming the extra: proves that
# the check sees a missing dependency (the original bug: `alerts` without PyYAML).
MUST_FAIL = ("checkpoint-sidecar", ["alerts", "--out", "-"], "checkpoint-sidecar[server]")
