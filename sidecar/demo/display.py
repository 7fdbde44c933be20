"""The demo's screens: a live board while the runs go, and the summary at the end (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from sidecar.demo.board import Board


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def live_view(board: Board, header: str) -> RenderableType:
    """One frame of the live display."""
    stats = Table.grid(padding=(0, 3))
    stats.add_column(justify="right", style="bold")
    stats.add_column()
    stats.add_column(justify="right", style="bold")
    stats.add_column()
    redis = "[red]PAUSED (SIGSTOP)[/]" if board.redis_paused else "[green]up[/]"
    breaker = "[red]OPEN: calls skipped[/]" if board.circuit_open() else "[green]closed[/]"
    stats.add_row(
        str(board.active), "runs in flight", str(board.resumed_runs), "runs resumed"
    )  # fmt: skip
    stats.add_row(
        str(board.sections("produced")), "sections produced (LLM)",
        str(board.sections("restored")), "sections restored (no LLM)",
    )  # fmt: skip
    stats.add_row(
        str(board.crashes), "crashes injected", str(board.llm_timeouts), "LLM timeouts injected"
    )  # fmt: skip
    stats.add_row(
        f"{board.llm_seconds_saved:.1f} s", "LLM time saved",
        str(board.budget_breaches()), f"calls over {board.budget_ms:g} ms budget",
    )  # fmt: skip
    stats.add_row(
        str(board.expiries), "TTL expiries seen", redis, f"Redis · breaker {breaker}"
    )  # fmt: skip
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=board.total_runs, completed=board.done, width=40),
        Text(f"{board.done}/{board.total_runs} runs done · {board.elapsed:.1f} s · {board.phase}"),
    )
    stream = Text("\n".join(board.thinking) or "(waiting for the agents)", style="dim")
    return Group(
        Panel(Group(bar, Text(""), stats), title=header, title_align="left"),
        Panel(stream, title="emit_thinking stream (latest)", title_align="left"),
    )


def latency_table(board: Board) -> Table:
    table = Table(title=f"Checkpoint latency in ms per operation (budget {board.budget_ms:g} ms)")
    table.add_column("operation", no_wrap=True)
    for column in ("calls", "p50", "p99", "max", "breach", "timeout/skip"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in board.latency_rows():
        style = "red" if row["p99_ms"] > board.budget_ms else "green"
        table.add_row(
            row["operation"], str(row["calls"]), _ms(row["p50_ms"]),
            f"[{style}]{_ms(row['p99_ms'])}[/]", _ms(row["max_ms"]), str(row["over_budget"]),
            f"{row['timeouts']}/{row['skipped']}",
        )  # fmt: skip
    return table


def summary_table(board: Board) -> Table:
    s = board.summary()
    table = Table(title="checkpoint-sidecar demo: summary", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column(style="dim")
    rows: list[tuple[str, str, str]] = [
        ("runs", str(s["runs"]),
         f"{s['completed']} completed, {s['failed']} failed, {s['abandoned']} abandoned"),
        ("attempts", str(s["attempts"]),
         f"{s['crashes_injected']} crashes and {s['llm_timeouts_injected']} LLM timeouts injected"),
        ("resumed runs", str(s["resumed_runs"]), "finished by a retry that restored checkpoints"),
        ("sections restored", str(s["sections_restored"]), "taken from Redis, no LLM call"),
        ("sections produced", str(s["sections_produced"]), "LLM calls that were checkpointed"),
        ("LLM time saved", f"{s['llm_seconds_saved']:.2f} s",
         f"by resuming (of {s['llm_seconds_spent']:.2f} s simulated LLM time spent)"),
        ("budget breaches", str(s["budget_breaches"]),
         f"checkpoint calls over {s['budget_ms']:g} ms ({s['timeouts']} timed out, "
         f"{s['skipped_by_breaker']} skipped by the open breaker)"),
        ("TTL expiries seen", str(s["ttl_expiries_seen"]),
         f"by the sidecar's watcher ({s['abandoned']} runs abandoned, "
         f"{s['abandoned_with_checkpoints']} of them with checkpoints)"),
    ]  # fmt: skip
    if s["redis_pauses"]:
        rows.append(
            ("Redis paused", f"{s['redis_pauses']}×",
             f"breaker opened {s['breaker_openings']}×; {s['degraded_attempts']} attempts ran "
             "without checkpoints instead of waiting for Redis")
        )  # fmt: skip
    for row in rows:
        table.add_row(*row)
    return table


def example_result(board: Board) -> RenderableType:
    """The seed's result dict of one resumed run, section bodies shortened."""
    result = board.example_result
    if result is None:
        return Text("")
    shown: dict[str, Any] = dict(result)
    shown["report"] = {
        name: f"<{section['title']}: {len(section['body'])} chars>"
        for name, section in result["report"].items()
    }
    return Panel(Text(repr(shown)), title=f"result of {board.example_label}", title_align="left")


def print_summary(console: Console, board: Board) -> None:
    console.print()
    console.print(summary_table(board))
    console.print(latency_table(board))
    console.print(example_result(board))
    if board.node is not None:
        n = board.node
        console.print(
            f"Node agents through the HTTP API ({n['api_url']}): {n['runs']} runs, "
            f"{n['completed']} completed, {n['resumed']} resumed after {n['crashes']} crashes, "
            f"{n['restored']} sections restored, {n['produced']} produced "
            "(counted in the tables above with the Python agents)",
            highlight=False,
        )
