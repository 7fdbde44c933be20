"""The saver's I/O-free core: what each operation sends (``plan_*``) and what a reply means
(``parse_*``).

Nothing here awaits or touches a socket: a ``plan_*`` function returns the script, keys and
arguments of one Redis call; a ``parse_*`` function turns the reply into LangGraph's types.
The async shell (:mod:`sidecar.langgraph.saver`) only sends plans through
:meth:`sidecar.Checkpointer.execute`; a synchronous shell can send the same plans.

Stored formats (fields of the thread's state hash, see :mod:`sidecar.langgraph.keys`; ``|`` is
``\\x1f``, ``/`` is ``\\x1e``):

* checkpoint ``c|ns|id`` = ``metadata / versions / parent / type | bytes``: metadata as JSON
  (LangGraph's own savers keep it plain, so ``list(filter=...)`` matches it on the server), the
  channel versions as ``channel|version|...`` (the script reads them to fetch the values), and
  the checkpoint without its id, values and versions through the saver's ``serde`` (so an
  ``EncryptedSerializer`` keeps working);
* writes ``w|ns|id``: the checkpoint's writes, appended as length-prefixed records
  ``<n>:task|idx|task_path|channel|type|bytes``;
* channel values ``b|ns|channel|version`` = ``type | bytes``, once per (ns, channel, version).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_serializable_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.types import ERROR, INTERRUPT

from sidecar.codec import parse as parse_json
from sidecar.core.packed import unpack
from sidecar.errors import InvalidIdentifier, SerializationError
from sidecar.langgraph import lua
from sidecar.langgraph.keys import (
    RS,
    US,
    ThreadKeys,
    check_part,
    run_key,
    thread_keys,
)
from sidecar.lua import Script
from sidecar.store import Arg

_to_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_USB = US.encode()
_RSB = RS.encode()
_EMPTY = b"empty" + _USB
_HALTING = frozenset({ERROR, INTERRUPT})
# Index members one list call looks at: bounds the server time of a filtered list.
LIST_SCAN_BUDGET = 256
FRESH, RESUMED = "fresh", "resumed"
_MODES = {1: FRESH, 2: RESUMED}


class Plan(NamedTuple):
    """One Redis call: a script, its keys and its arguments."""

    script: Script
    keys: tuple[str, ...]
    args: tuple[Arg, ...]


class Target(NamedTuple):
    """Where a config points: thread, namespace (None = every namespace) and checkpoint id.
    (A tuple: built on every call, where a frozen dataclass pays a ``__setattr__`` a field.)"""

    thread_id: str
    ns: str | None
    checkpoint_id: str | None


def target(config: RunnableConfig, *, all_namespaces_if_absent: bool = False) -> Target:
    """Read thread_id / checkpoint_ns / checkpoint_id from a LangGraph config."""
    conf = config.get("configurable") or {}
    thread = conf.get("thread_id")
    if thread is None:
        raise ValueError("config['configurable']['thread_id'] is required")
    ns = conf.get("checkpoint_ns")
    if ns is None and not all_namespaces_if_absent:
        ns = ""
    cid = conf.get("checkpoint_id") or None
    return Target(
        str(thread),
        None if ns is None else check_part("checkpoint_ns", ns),
        None if cid is None else check_part("checkpoint_id", cid),
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _raw(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _typed(serde: SerializerProtocol, value: Any) -> bytes:
    kind, data = serde.dumps_typed(value)
    return kind.encode() + _USB + data


def _untyped(serde: SerializerProtocol, stored: bytes) -> Any:
    kind, _, data = stored.partition(_USB)
    return serde.loads_typed((kind.decode(), data))


def thread_config(thread_id: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint_id,
        }
    }


# --- put -------------------------------------------------------------------------------------


def encode_version(version: str | int | float) -> str:
    """A channel version as stored in field names: text as is, numbers tagged to come back."""
    if type(version) is str and version[:1] != "#":  # the hot path: this saver's versions
        return version
    if isinstance(version, str):
        return "#s" + version
    return f"#i{version}" if isinstance(version, int) else "#f" + repr(version)


def decode_version(token: str) -> str | int | float:
    if token[:1] != "#":
        return token
    kind, rest = token[1:2], token[2:]
    return int(rest) if kind == "i" else float(rest) if kind == "f" else rest


@dataclass(frozen=True, slots=True)
class PutPlan:
    plan: Plan
    run_id: str | None
    config: RunnableConfig

    def registered(self) -> PutPlan:
        """The same put, telling the script the run index was just refreshed."""
        head = str(self.plan.args[0])
        cut = head.rindex(US, 0, head.rindex(US))  # ...|registered|source
        args = (head[:cut] + US + "1" + head[cut + 2 :], *self.plan.args[1:])
        return PutPlan(self.plan._replace(args=args), self.run_id, self.config)


def metadata_json(config: RunnableConfig, metadata: CheckpointMetadata) -> tuple[str, str | None]:
    """Metadata as LangGraph merges it (config metadata included), as JSON; and its run id."""
    merged = get_serializable_checkpoint_metadata(config, metadata)
    try:
        text = _to_json(merged)
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"checkpoint metadata is not JSON: {exc}") from exc
    run = merged.get("run_id")
    return text, None if run is None else check_part("run_id", str(run))


def plan_put(
    keys: ThreadKeys,
    serde: SerializerProtocol,
    config: RunnableConfig,
    checkpoint: Checkpoint,
    metadata: CheckpointMetadata,
    new_versions: ChannelVersions,
    ttl_ms: int,
    where: Target | None = None,
) -> PutPlan:
    """One checkpoint, the values of the channels that changed, its index entries
    (``where``: ``target(config)``, when the caller has it already)."""
    if where is None:
        where = target(config)
    ns = where.ns or ""
    cid = check_part("checkpoint_id", checkpoint["id"])
    parent = where.checkpoint_id or ""
    stored = {
        k: v for k, v in checkpoint.items() if k not in ("channel_values", "channel_versions", "id")
    }
    md_text, run = metadata_json(config, metadata)
    channel_versions = checkpoint["channel_versions"]
    versions = US.join([ch + US + encode_version(ver) for ch, ver in channel_versions.items()])
    _check_pairs("channel versions", versions, len(channel_versions))
    record = (md_text + RS + versions + RS + parent + RS).encode() + _typed(serde, stored)
    values = checkpoint["channel_values"]
    # the scalars in one argument (none may hold the separator): redis-py packs each argument
    # in Python, ~0.5 us apiece on every put
    source = "1" if metadata.get("source") == "input" else "0"
    args: list[Arg] = [US.join((ns, cid, parent, str(ttl_ms), run or "", "0", source)), record]
    for ch, ver in new_versions.items():
        pair = ch + US + encode_version(ver)
        _check_pairs("new versions", pair, 1)
        args.append(pair)
        args.append(_typed(serde, values[ch]) if ch in values else _EMPTY)
    return PutPlan(
        Plan(lua.PUT_CHECKPOINT, keys.all, tuple(args)),
        run,
        thread_config(where.thread_id, ns, cid),
    )


def _check_pairs(kind: str, joined: str, pairs: int) -> None:
    """``joined`` is ``pairs`` channel/version pairs joined by the unit separator: one check
    instead of one per name (this runs on every put)."""
    if joined.count(US) != max(0, 2 * pairs - 1) or RS in joined:
        raise InvalidIdentifier(f"{kind}: names and versions must not contain \\x1e or \\x1f")


def parse_put(reply: Any) -> tuple[str | None, list[str]]:
    """(run mode counted by this put, or None; run ids whose run index needs a refresh)."""
    if isinstance(reply, int):
        return _MODES.get(reply), []
    return _MODES.get(int(reply[0])), [_text(r) for r in reply[1]]


# --- put_writes ------------------------------------------------------------------------------


def plan_put_writes(
    keys: ThreadKeys,
    serde: SerializerProtocol,
    config: RunnableConfig,
    writes: Sequence[tuple[str, Any]],
    task_id: str,
    task_path: str,
    ttl_ms: int,
    where: Target | None = None,
) -> Plan:
    if where is None:
        where = target(config)
    if where.checkpoint_id is None:
        raise ValueError("put_writes needs config['configurable']['checkpoint_id']")
    head = check_part("task_id", task_id) + US
    tail = US + check_part("task_path", task_path) + US
    records = []
    halts = "0"
    for position, (channel, value) in enumerate(writes):
        idx = WRITES_IDX_MAP.get(channel, position)
        body = (head + str(idx) + tail + check_part("channel", channel) + US).encode()
        body += _typed(serde, value)
        records.append(b"%d:%b" % (len(body), body))
        if channel in _HALTING:
            halts = "1"
    args: tuple[Arg, ...] = (where.ns or "", where.checkpoint_id, ttl_ms, halts, b"".join(records))
    return Plan(lua.PUT_WRITES, keys.all, args)


def parse_put_writes(reply: Any) -> str | None:
    return _MODES.get(int(reply))


# --- reads -----------------------------------------------------------------------------------


def plan_get_tuple(
    keys: ThreadKeys, config: RunnableConfig, refresh_ms: int | None, where: Target | None = None
) -> Plan:
    if where is None:
        where = target(config)
    if refresh_ms is None:  # the runs key is only touched to slide the TTL: not sent
        args: tuple[Arg, ...] = (where.ns or "", where.checkpoint_id or "", "")
        return Plan(lua.GET_TUPLE, (keys.idx, keys.state), args)
    args = (where.ns or "", where.checkpoint_id or "", refresh_ms)
    return Plan(lua.GET_TUPLE_REFRESH, keys.all, args)


def parse_checkpoint(serde: SerializerProtocol, thread_id: str, packed: bytes) -> CheckpointTuple:
    """One loaded checkpoint (ns, id, record, writes, then each channel's value in the order of
    the record's versions) as a tuple;
    :class:`SerializationError` when a stored value does not decode (outcome ``corrupt``)."""
    try:
        return _checkpoint(serde, thread_id, packed)
    except SerializationError:
        raise
    except Exception as exc:  # the serde's own errors: msgpack, JSON, an EncryptedSerializer's
        raise SerializationError(
            f"a stored checkpoint of thread {thread_id!r} does not decode ({type(exc).__name__})"
        ) from exc


def _checkpoint(serde: SerializerProtocol, thread_id: str, packed: bytes) -> CheckpointTuple:
    entry = unpack(packed)
    ns, cid = entry[0].decode(), entry[1].decode()
    md_raw, versions_raw, rest = entry[2].split(_RSB, 2)
    parent_raw, _, typed = rest.partition(_RSB)
    checkpoint = _untyped(serde, typed)
    checkpoint["id"] = cid
    tokens = versions_raw.decode().split(US) if versions_raw else []
    channels = tokens[0::2]
    checkpoint["channel_versions"] = dict(
        zip(channels, map(decode_version, tokens[1::2]), strict=True)
    )
    # the values come in the order of the versions, b'' for one not stored
    checkpoint["channel_values"] = {
        channel: _untyped(serde, value)
        for channel, value in zip(channels, entry[4:], strict=True)
        if value and value != _EMPTY
    }
    parent = parent_raw.decode()
    return CheckpointTuple(
        config=thread_config(thread_id, ns, cid),
        checkpoint=checkpoint,
        metadata=parse_json(md_raw),
        parent_config=thread_config(thread_id, ns, parent) if parent else None,
        pending_writes=_pending_writes(serde, entry[3]),
    )


def _pending_writes(serde: SerializerProtocol, packed: bytes) -> list[tuple[str, str, Any]]:
    """Writes in LangGraph's order (task_path, task_id, idx): the first of a regular write
    stored twice (a retried put_writes), the last of a special one."""
    found: dict[tuple[str, int], tuple[str, str, bytes]] = {}
    pos = 0
    while pos < len(packed):
        colon = packed.index(b":", pos)
        end = colon + 1 + int(packed[pos:colon])
        task_id, idx_raw, path, channel, typed = packed[colon + 1 : end].split(_USB, 4)
        key = (task_id.decode(), int(idx_raw))
        if key[1] < 0 or key not in found:
            found[key] = (path.decode(), channel.decode(), typed)
        pos = end
    rows = sorted(found.items(), key=lambda item: writes_sort_key(item[1][0], *item[0]))
    return [(key[0], row[1], _untyped(serde, row[2])) for key, row in rows]


def parse_get_tuple(
    serde: SerializerProtocol, thread_id: str, reply: Any
) -> CheckpointTuple | None:
    if not reply:
        return None
    return parse_checkpoint(serde, thread_id, _raw(reply))


@dataclass(frozen=True, slots=True)
class ListRequest:
    """One ``list`` call, paged: each page is one script call scanning a bounded slice."""

    thread_id: str
    ns: str | None
    before: str | None
    limit: int | None
    filter_json: str
    refresh_ms: int | None


def list_request(
    config: RunnableConfig | None,
    filter: Mapping[str, Any] | None,
    before: RunnableConfig | None,
    limit: int | None,
    refresh_ms: int | None,
) -> ListRequest:
    if config is None:
        raise ValueError(
            "SidecarSaver.list needs a config with a thread_id: listing every thread would "
            "need a scan of the keyspace, which this saver never does"
        )
    where = target(config, all_namespaces_if_absent=True)
    before_id = None if before is None else target(before).checkpoint_id
    if where.checkpoint_id is not None:  # a config naming one checkpoint lists only that one
        before_id = None
    try:
        filter_json = json.dumps(dict(filter), separators=(",", ":")) if filter else ""
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"list filter is not JSON: {exc}") from exc
    return ListRequest(where.thread_id, where.ns, before_id, limit, filter_json, refresh_ms)


def plan_list_page(keys: ThreadKeys, request: ListRequest, cursor: str, wanted: int) -> Plan:
    args: tuple[Arg, ...] = (
        "0" if request.ns is None else "1", request.ns or "", request.before or "", cursor,
        wanted, LIST_SCAN_BUDGET, request.filter_json,
        "" if request.refresh_ms is None else request.refresh_ms,
    )  # fmt: skip
    if request.refresh_ms is None:  # the runs key is only touched to slide the TTL: not sent
        return Plan(lua.LIST, (keys.idx, keys.state), args)
    return Plan(lua.LIST_REFRESH, keys.all, args)


def parse_list_page(
    serde: SerializerProtocol, thread_id: str, reply: Sequence[Any]
) -> tuple[list[CheckpointTuple], str]:
    """(checkpoints newest first, cursor for the next page or '' when done)."""
    try:
        packed = unpack(_raw(reply[0]))
    except (ValueError, IndexError) as exc:
        raise SerializationError(f"lg_list: a reply that does not decode ({exc})") from exc
    return [parse_checkpoint(serde, thread_id, entry) for entry in packed], _text(reply[1])


# --- deletes, copy, prune, run index ---------------------------------------------------------


def plan_delete_thread(prefix: str, thread_id: str) -> Plan:
    return Plan(lua.DELETE_THREAD, thread_keys(prefix, thread_id).all, ())


def plan_run_threads(prefix: str, run_id: str) -> Plan:
    return Plan(lua.RUN_THREADS, (run_key(prefix, run_id),), ())


def parse_run_threads(reply: Sequence[Any]) -> list[str]:
    return sorted(_text(t) for t in reply)


def plan_delete_run_in_thread(prefix: str, thread_id: str, run_id: str, ttl_ms: int) -> Plan:
    args: tuple[Arg, ...] = (check_part("run_id", run_id), ttl_ms)
    return Plan(lua.DELETE_RUN_IN_THREAD, thread_keys(prefix, thread_id).all, args)


def plan_forget_run_threads(prefix: str, run_id: str, thread_ids: Sequence[str]) -> Plan:
    return Plan(lua.FORGET_RUN_THREADS, (run_key(prefix, run_id),), tuple(thread_ids))


def plan_register_run(prefix: str, run_id: str, thread_ids: Sequence[str], ttl_ms: int) -> Plan:
    return Plan(lua.REGISTER_RUN, (run_key(prefix, run_id),), (ttl_ms, *thread_ids))


def plan_prune(prefix: str, thread_id: str, strategy: str, ttl_ms: int) -> Plan:
    if strategy not in ("keep_latest", "delete"):
        raise ValueError(f"unknown prune strategy {strategy!r}: use 'keep_latest' or 'delete'")
    return Plan(lua.PRUNE_THREAD, thread_keys(prefix, thread_id).all, (strategy, ttl_ms))


def plan_dump_thread(prefix: str, thread_id: str) -> Plan:
    return Plan(lua.DUMP_THREAD, thread_keys(prefix, thread_id).all, ())


@dataclass(frozen=True, slots=True)
class ThreadDump:
    idx: bytes
    state: bytes
    runs: bytes
    run_ids: list[str]


def parse_dump_thread(reply: Any) -> ThreadDump | None:
    if not reply:
        return None
    return ThreadDump(_raw(reply[0]), _raw(reply[1]), _raw(reply[2]), [_text(r) for r in reply[3]])


def plan_restore_thread(prefix: str, thread_id: str, dump: ThreadDump, ttl_ms: int) -> Plan:
    keys: ThreadKeys = thread_keys(prefix, thread_id)
    return Plan(lua.RESTORE_THREAD, keys.all, (ttl_ms, dump.idx, dump.state, dump.runs))


def metadata_matches(metadata: Mapping[str, Any], filter: Mapping[str, Any] | None) -> bool:
    """The list filter: every key equal (what the list script checks on the server)."""
    return not filter or all(metadata.get(k) == v for k, v in filter.items())


def next_version(current: str | int | float | None) -> str:
    """``<12-digit counter>.<8 random hex digits>``: sorts as text as the counter does (as
    InMemorySaver's 49-character versions do), in 21 characters, which every stored value's
    field name carries. The random tail keeps two forks' values of one step apart."""
    import random

    if current is None:
        number = 0
    elif isinstance(current, (int, float)):
        number = int(current)
    else:
        number = int(current.split(".")[0])
    return f"{number + 1:012d}.{random.getrandbits(32):08x}"
