"""The Lua scripts, one per multi-key change, each named for what it does.

Every script touches only the keys of one run (one hash slot), so each is atomic on a single
node, standalone or cluster. Scripts that write carry the ``#!lua`` shebang (Redis/Valkey 7+):
the server then refuses them *before* they run when it is out of memory, so an OOM never
leaves half a save. Read-only scripts say ``flags=no-writes`` so they still work under OOM,
and the ones that only free memory or extend a TTL (lease renew and release, cleanup after
success) say ``flags=allow-oom`` so that they work exactly when memory is short.

Key order is always ``KEYS[1]`` sections, ``KEYS[2]`` meta, ``KEYS[3]`` lease, ``KEYS[4]``
done (see keys.py).
Meta hash fields: ``fence`` fencing token (grows with the server clock, never goes back),
``seq`` sections completed, ``o:<section>`` the completion position of a section, ``t`` last
save as server ``TIME`` ("sec.usec"), ``ip`` the section in progress, ``total`` the plan length.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua source and its SHA1, computed once: the store calls EVALSHA, EVAL on NOSCRIPT."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


# Lease guard of writes made through a run (ARGV[4] owner, ARGV[5] fence, ARGV[6] lease ms).
# A write is allowed while this attempt holds the lease; a lease that merely expired is re-taken
# when nobody acquired the run since (the fence is still ours, or the run's data vanished:
# expiry, eviction, a restart without persistence). Refused: another holder ('held'), a newer
# acquisition ('fenced'), or a run that completed since ('gone': its ``done`` key), so a stale
# attempt never recreates a finished run.
_LEASE_GUARD = """
local owner = ARGV[4]
if owner ~= '' then
  local holder = redis.call('GET', KEYS[3])
  if holder and holder ~= owner then return {0, 'held'} end
  local fence = redis.call('HGET', KEYS[2], 'fence')
  if fence and fence ~= ARGV[5] then return {0, 'fenced'} end
  if not holder then
    if not fence and redis.call('EXISTS', KEYS[4]) == 1 then return {0, 'gone'} end
    redis.call('SET', KEYS[3], owner, 'PX', ARGV[6])
  end
  if not fence then redis.call('HSET', KEYS[2], 'fence', ARGV[5]) end
end
"""

# Whether the run may still be this attempt's although its lease is gone: the fence is ours,
# or the run's data vanished and it did not complete since. (KEYS[2] meta, KEYS[4] done.)
_STILL_OURS = """
local function still_ours(fence)
  local stored = redis.call('HGET', KEYS[2], 'fence')
  if stored then return stored == fence end
  return redis.call('EXISTS', KEYS[4]) == 0
end
"""

# The next fencing token: above the run's last one (live, or of the run that completed) and at
# least the server clock in microseconds, so tokens keep growing after the run's keys are
# cleaned up, expire or are evicted (a counter in the meta hash alone restarts at 1). Kept as a
# decimal string: Lua prints numbers above 1e14 in exponent notation.
_NEXT_FENCE = """
local function next_fence()
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('HGET', KEYS[2], 'fence') or '0')
  local done = tonumber(redis.call('GET', KEYS[4]) or '0')
  if done > last then last = done end
  if last >= now then now = last + 1 end
  return string.format('%.0f', now)
end
"""

# Mark the section in progress (ARGV[mark]; '' = none) or clear it.
_MARK = """
local function mark(section)
  if section ~= '' then
    redis.call('HSET', KEYS[2], 'ip', section)
  else
    redis.call('HDEL', KEYS[2], 'ip')
  end
end
"""

# Parts as one string "<len>,<len>,...;<part><part>..." (read by ``sidecar.core.packed``): a
# reply of one bulk string costs the client far less than an array of many, because redis-py
# parses each element in Python (~2.5 us an element measured here, more inside nested arrays).
# Binary-safe: sealed and compressed values are arbitrary bytes. Shared by the core's reading
# scripts and the LangGraph saver's.
PACK = r"""
local function pack(parts)
  local lens = {}
  for i = 1, #parts do lens[i] = #parts[i] end
  local out = {table.concat(lens, ','), ';'}
  for i = 1, #parts do out[i + 2] = parts[i] end
  return table.concat(out)
end
"""

# Every section as packed [name, content, ...] in completion order (sections without an order
# entry last, by name; ``meta``: the meta hash when the caller read it already). Sorting here
# sends the client one value instead of both hashes: ~20 us less per call than returning
# HGETALL of sections and meta for Python to order.
_SECTIONS_IN_ORDER = (
    PACK
    + """
local function sections_in_order(meta)
  local flat = redis.call('HGETALL', KEYS[1])
  local n = #flat / 2
  local out = {}
  if n == 0 then return '' end
  meta = meta or redis.call('HGETALL', KEYS[2])
  local pos = {}
  for i = 1, #meta, 2 do
    if string.sub(meta[i], 1, 2) == 'o:' then
      pos[string.sub(meta[i], 3)] = tonumber(meta[i + 1])
    end
  end
  local idx = {}
  for i = 1, n do idx[i] = i end
  table.sort(idx, function(a, b)
    local na, nb = flat[2 * a - 1], flat[2 * b - 1]
    local pa, pb = pos[na] or math.huge, pos[nb] or math.huge
    if pa ~= pb then return pa < pb end
    return na < nb
  end)
  for j, i in ipairs(idx) do
    out[2 * j - 1] = flat[2 * i - 1]
    out[2 * j] = flat[2 * i]
  end
  return pack(out)
end
"""
)

# ARGV: section, payload, ttl_ms, owner ('' = no lease), fence, lease_ms, next section in
# progress ('' = none; a run folds the next step's marker into this save: one round trip a step)
# Returns 1, or {0, 'held' | 'fenced' | 'gone'} when the lease guard refuses the write. (A bare
# integer: an array reply costs the client ~8 us more to read, on every save.)
SAVE_SECTION = Script(
    "save_section",
    "#!lua\n"
    + _LEASE_GUARD
    + _MARK
    + """
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local section = ARGV[1]
redis.call('HSET', KEYS[1], section, ARGV[2])
local okey = 'o:' .. section
if redis.call('HEXISTS', KEYS[2], okey) == 0 then
  redis.call('HSET', KEYS[2], okey, redis.call('HINCRBY', KEYS[2], 'seq', 1), 't', now)
else
  redis.call('HSET', KEYS[2], 't', now)
end
if owner ~= '' then
  mark(ARGV[7])
elseif redis.call('HGET', KEYS[2], 'ip') == section then
  redis.call('HDEL', KEYS[2], 'ip')
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
""",
)

# ARGV: owner, lease_ms, ttl_ms, plan... (the plan's sections in order; may be empty)
# Takes the lease (or keeps it, when a timed-out acquire of this owner landed), sets the next
# fencing token, records the plan length, marks the first planned section not yet stored as in
# progress, slides the TTL. Returns {1, fence, sections in order (packed)} or {0, lease pttl}.
ACQUIRE_LEASE = Script(
    "lease_acquire",
    "#!lua\n"
    + _SECTIONS_IN_ORDER
    + _NEXT_FENCE
    + _MARK
    + """
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[1] then return {0, redis.call('PTTL', KEYS[3])} end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
local fence = next_fence()
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[2], 'fence', fence)
if #ARGV > 3 then redis.call('HSET', KEYS[2], 'total', #ARGV - 3) end
local first = ''
for i = 4, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then first = ARGV[i]; break end
end
mark(first)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, fence, sections_in_order()}
""",
)

# The scripts below only free memory or extend a TTL, so they carry ``allow-oom``: they must
# work exactly when Redis is full (noeviction), or a full Redis would keep every lease until
# it expires and every finished run until its TTL. (Re-taking an expired lease in renew writes
# one small key: worth it to keep a live run fenced.)

# KEYS: sections, meta, lease, done. ARGV: owner, lease_ms, fence.
# Returns 1 (still ours; an expired lease nobody took is re-taken), 0 (lost: another attempt
# holds or acquired the run, or the run completed since).
RENEW_LEASE = Script(
    "lease_renew",
    "#!lua flags=allow-oom\n"
    + _STILL_OURS
    + """
local holder = redis.call('GET', KEYS[3])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[3], ARGV[2]) end
if holder or not still_ours(ARGV[3]) then return 0 end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
return 1
""",
)

# KEYS: meta, lease. ARGV: owner. Returns 1 when released, 0 when it was not ours.
RELEASE_LEASE = Script(
    "lease_release",
    """#!lua flags=allow-oom
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  redis.call('HDEL', KEYS[1], 'ip')
  return 1
end
return 0
""",
)

# Cleanup after a successful run: delete the run's data if this attempt owns it (it holds the
# lease, or the lease expired and the run is still its own), and leave the ``done`` key with
# the run's last fencing token for ttl_ms. ARGV: owner, fence ('' = this attempt never
# confirmed a fence: only a lease of its own, from an acquire that landed, counts), ttl_ms.
# Returns 1 (deleted) or 0 (another attempt holds, took or completed the run).
FINISH_RUN = Script(
    "cleanup",
    "#!lua flags=allow-oom\n"
    + _STILL_OURS
    + """
local holder = redis.call('GET', KEYS[3])
if holder ~= ARGV[1] then
  if holder or ARGV[2] == '' or not still_ours(ARGV[2]) then return 0 end
end
local fence = redis.call('HGET', KEYS[2], 'fence') or ARGV[2]
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3])
if fence ~= '' then redis.call('SET', KEYS[4], fence, 'PX', ARGV[3]) end
return 1
""",
)

# Mark the section a run is producing (when no earlier save or acquire could: a step out of
# plan order). ARGV: section, owner, ttl_ms, fence. Returns 1, or 0 when the run is not this
# attempt's any more (learnt before paying for the section).
MARK_IN_PROGRESS = Script(
    "mark_in_progress",
    "#!lua\n"
    + _STILL_OURS
    + """
local holder = redis.call('GET', KEYS[3])
if holder ~= ARGV[2] and (holder or not still_ours(ARGV[4])) then return 0 end
redis.call('HSET', KEYS[2], 'ip', ARGV[1])
if redis.call('PTTL', KEYS[2]) < 0 then redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
return 1
""",
)

LOAD_ALL = Script(
    "load_all_sections",
    "#!lua flags=no-writes\n" + _SECTIONS_IN_ORDER + "return sections_in_order()\n",
)

# Same, and slide the run's TTL (refresh_ttl_on_read). ARGV: ttl_ms.
LOAD_ALL_REFRESH = Script(
    "load_all_sections",
    "#!lua\n"
    + _SECTIONS_IN_ORDER
    + """local out = sections_in_order()
if #out > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return out
""",
)

# One section, sliding the run's TTL. ARGV: section, ttl_ms.
LOAD_SECTION_REFRESH = Script(
    "load_section",
    """#!lua
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return value
""",
)

# Returns {last save "sec.usec" or false, server TIME}: ages come from the server's clock.
CHECKPOINT_AGE = Script(
    "get_checkpoint_age",
    """#!lua flags=no-writes
local t = redis.call('TIME')
return {redis.call('HGET', KEYS[2], 't'), t[1], t[2]}
""",
)

# The resume view of a run in one call: {sections in order (packed), meta (HGETALL, packed), server
# TIME seconds, microseconds}. Read-only.
RESUME_VIEW = Script(
    "resume_view",
    "#!lua flags=no-writes\n"
    + _SECTIONS_IN_ORDER
    + """local t = redis.call('TIME')
local meta = redis.call('HGETALL', KEYS[2])
return {sections_in_order(meta), pack(meta), t[1], t[2]}
""",
)
