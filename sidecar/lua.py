"""The Lua scripts, one per multi-key change, each named for what it does.

Every script touches only the keys of one run (one hash slot), so each is atomic on a single
node, standalone or cluster. Scripts that write carry the ``#!lua`` shebang (Redis/Valkey 7+):
the server then refuses them *before* they run when it is out of memory, so an OOM never
leaves half a save. Read-only scripts say ``flags=no-writes`` so they still work under OOM.

Key order is always ``KEYS[1]`` sections, ``KEYS[2]`` meta, ``KEYS[3]`` lease (see keys.py).
Meta hash fields: ``fence`` fencing counter, ``seq`` sections completed, ``o:<section>`` the
completion position of a section, ``t`` last save as server ``TIME`` ("sec.usec"), ``ip`` the
section in progress, ``total`` the plan length.
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


# Lease guard shared by writes made through a run: refuse when another attempt holds the lease
# or has acquired the run since (fence moved on); re-take a lease that merely expired.
_LEASE_GUARD = """
local owner = ARGV[4]
if owner ~= '' then
  local holder = redis.call('GET', KEYS[3])
  if holder and holder ~= owner then return {0, 'held'} end
  local fence = redis.call('HGET', KEYS[2], 'fence')
  if fence and fence ~= ARGV[5] then return {0, 'fenced'} end
  if not holder then redis.call('SET', KEYS[3], owner, 'PX', ARGV[6]) end
  if not fence then redis.call('HSET', KEYS[2], 'fence', ARGV[5]) end
end
"""

# Every section as a flat [name, content, ...] in completion order (sections without an order
# entry last, by name). Sorting here sends the client one short array instead of both hashes:
# ~20 us less per call than returning HGETALL of sections and meta for Python to order.
_SECTIONS_IN_ORDER = """
local function sections_in_order()
  local flat = redis.call('HGETALL', KEYS[1])
  local n = #flat / 2
  local out = {}
  if n == 0 then return out end
  local meta = redis.call('HGETALL', KEYS[2])
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
  return out
end
"""

# ARGV: section, payload, ttl_ms, owner ('' = no lease), fence, lease_ms
# Returns 1, or {0, 'held' | 'fenced'} when the lease guard refuses the write. (A bare integer:
# an array reply costs the client ~8 us more to read, on every save.)
SAVE_SECTION = Script(
    "save_section",
    "#!lua\n"
    + _LEASE_GUARD
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
if redis.call('HGET', KEYS[2], 'ip') == section then redis.call('HDEL', KEYS[2], 'ip') end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
""",
)

# ARGV: owner, lease_ms, ttl_ms, total (plan length, 0 = none)
# Returns {1, fence, sections in order (flat)} or {0, lease pttl} when another owner holds it.
ACQUIRE_LEASE = Script(
    "lease_acquire",
    "#!lua\n"
    + _SECTIONS_IN_ORDER
    + """
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[1] then return {0, redis.call('PTTL', KEYS[3])} end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
local fence = redis.call('HINCRBY', KEYS[2], 'fence', 1)
if tonumber(ARGV[4]) > 0 then redis.call('HSET', KEYS[2], 'total', ARGV[4]) end
redis.call('HDEL', KEYS[2], 'ip')
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, fence, sections_in_order()}
""",
)

# KEYS: lease. ARGV: owner, lease_ms. Returns 1 when still ours, 0 when lost.
RENEW_LEASE = Script(
    "lease_renew",
    """#!lua
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
""",
)

# KEYS: meta, lease. ARGV: owner. Returns 1 when released, 0 when it was not ours.
RELEASE_LEASE = Script(
    "lease_release",
    """#!lua
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  redis.call('HDEL', KEYS[1], 'ip')
  return 1
end
return 0
""",
)

# Cleanup after a successful run: delete every key of the run unless another attempt owns it.
# ARGV: owner, fence. Returns 1 (deleted) or 0 (another attempt holds or has taken the run).
FINISH_RUN = Script(
    "cleanup",
    """#!lua
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[1] then return 0 end
local fence = redis.call('HGET', KEYS[2], 'fence')
if fence and fence ~= ARGV[2] then return 0 end
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3])
return 1
""",
)

# Mark the section a run is producing. ARGV: section, owner, ttl_ms. Returns 1, or 0 if not ours.
MARK_IN_PROGRESS = Script(
    "mark_in_progress",
    """#!lua
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[2] then return 0 end
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
