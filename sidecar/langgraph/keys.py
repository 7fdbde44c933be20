"""Key layout of the LangGraph saver: one function per key, the hash tag, the field names.

A thread owns three keys, all in one Redis Cluster hash slot (its percent-encoded id is the
hash tag), so every read and every write of a thread is one Lua script on one node::

    <prefix>:lg:{<thread>}:idx    zset   the sorted index, every score 0, ordered by bytes:
                                         \\x01 ns \\x1f id         one per checkpoint
                                         \\x02 run \\x1f ns \\x1f id  one per checkpoint of a run
    <prefix>:lg:{<thread>}:state  hash   everything else, one field each (below)
    <prefix>:lg:{<thread>}:runs   zset   run id -> when its run index was last refreshed (ms)

Fields of ``state`` (``|`` is ``\\x1f``): ``c|ns|id`` checkpoint record, ``m|ns|id`` metadata
JSON, ``v|ns|id`` its channel versions, ``x|ns|id`` its writes' ``task|idx`` list,
``w|ns|id|task|idx`` one write, ``b|ns|channel|version`` one channel value, ``h|ns|id``
"halted here" (an error or an interrupt was written: the next write on it resumes the run).

And each LangGraph ``run_id`` met in checkpoint metadata has a run index, in its own slot::

    <prefix>:lg:run:{<run>}       set    thread ids holding checkpoints of that run

Checkpoint ids are uuid6 (time-ordered), so the byte order of the index is LangGraph's
"newest first" order reversed: ``get_tuple`` (latest) and ``list(limit=k)`` are one
ZREVRANGEBYLEX of k members, whatever the thread's length.

``idx`` is the thread's *counting key*: it exists exactly while the thread has a checkpoint, so
the expiry watcher counts one expired thread per expired ``idx`` (:func:`parse_thread_key`).

Namespaces, checkpoint ids, channel names, task ids and run ids are stored raw inside fields
and members, joined by the ASCII unit separator ``\\x1f`` (and ``\\x1e`` between list items);
values containing either are refused (:func:`check_part`). Thread and run ids go into key names
percent-encoded (as :mod:`sidecar.keys` does), so no id can escape the hash tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import unquote

from sidecar.errors import InvalidIdentifier
from sidecar.keys import encode_id

US: Final = "\x1f"  # unit separator: between the parts of one field or member
RS: Final = "\x1e"  # record separator: between the items of a list stored in one field
CHECKPOINT_MEMBER: Final = "\x01"
RUN_MEMBER: Final = "\x02"
INDEX: Final = "idx"
STATE: Final = "state"
RUNS: Final = "runs"
ThreadKeyKind = Literal["idx", "state", "runs"]
_KINDS: Final[frozenset[str]] = frozenset({INDEX, STATE, RUNS})
COUNTING_KIND: Final = INDEX


@dataclass(frozen=True, slots=True)
class ThreadKeys:
    """The three keys of one thread, in the order every thread script expects them."""

    idx: str
    state: str
    runs: str

    @property
    def all(self) -> tuple[str, str, str]:
        return (self.idx, self.state, self.runs)


def thread_keys(prefix: str, thread_id: object) -> ThreadKeys:
    """The keys of one thread. Raises :class:`InvalidIdentifier` for a bad thread id."""
    base = f"{prefix}:lg:{{{encode_id('thread_id', thread_id)}}}:"
    return ThreadKeys(base + INDEX, base + STATE, base + RUNS)


def run_key(prefix: str, run_id: object) -> str:
    """The run index of one LangGraph run id (a set of thread ids, in the run's own slot)."""
    return f"{prefix}:lg:run:{{{encode_id('run_id', run_id)}}}"


def check_part(kind: str, value: object) -> str:
    """A namespace, checkpoint id, channel, task id or run id stored inside a field."""
    if not isinstance(value, str):
        raise InvalidIdentifier(f"{kind} must be a str, got {type(value).__name__}")
    if US in value or RS in value:
        raise InvalidIdentifier(f"{kind} must not contain the characters \\x1e or \\x1f")
    return value


# --- field names of the state hash, and index members (the Lua scripts build the same) ----


def checkpoint_member(ns: str, checkpoint_id: str) -> str:
    return CHECKPOINT_MEMBER + ns + US + checkpoint_id


def split_checkpoint_member(member: str) -> tuple[str, str]:
    """(namespace, checkpoint id) of an index member."""
    ns, _, checkpoint_id = member[1:].partition(US)
    return ns, checkpoint_id


def blob_field(ns: str, channel: str, version: str) -> str:
    """One channel value at one version: stored once, shared by every checkpoint that has it."""
    return "b" + US + ns + US + channel + US + version


@dataclass(frozen=True, slots=True)
class ParsedThreadKey:
    """A key name decoded back into its thread and kind (for the expiry watcher)."""

    thread_id: str
    kind: ThreadKeyKind


def parse_thread_key(prefix: str, key: str | bytes) -> ParsedThreadKey | None:
    """Decode a thread key written under ``prefix``; None for any other key.

    The watcher counts a thread once: when the key of kind :data:`COUNTING_KIND` expires.
    """
    if isinstance(key, bytes):
        try:
            key = key.decode("utf-8")
        except UnicodeDecodeError:
            return None
    head = prefix + ":lg:{"
    if not key.startswith(head):
        return None
    tag, sep, kind = key[len(head) :].partition("}:")
    if not sep or kind not in _KINDS or not tag or ":" in tag:
        return None
    try:
        thread = unquote(tag, errors="strict")
    except UnicodeDecodeError:
        return None
    kind_literal: ThreadKeyKind = kind  # type: ignore[assignment]
    return ParsedThreadKey(thread, kind_literal)
