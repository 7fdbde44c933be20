"""The saver's Lua scripts, one per step, each named for what it does.

A thread script receives the thread's keys in the order of
:class:`~sidecar.langgraph.keys.ThreadKeys` (``KEYS[1]`` idx, ``KEYS[2]`` state,
``KEYS[3]`` runs), all in one hash slot, so each is atomic on one node, standalone or cluster;
the reads that do not slide the TTL get only the first two (a key fewer to send and check).
Every thread script that writes ends by setting the TTL of all three keys (sliding on writes):
no key is ever left without one. Writing scripts carry the ``#!lua`` shebang (refused before they
run under OOM: never half a checkpoint); reads say ``flags=no-writes``, except the variants that
slide the TTL on reads (``refresh_ttl_on_read``).

The field and member layout is described in :mod:`sidecar.langgraph.keys`; ``\\31`` is the unit
separator, ``\\30`` the record separator, index members start with ``\\1`` (a checkpoint) or
``\\2`` (a checkpoint of a run), and ``\\32`` (space, ``\\31`` + 1) closes a prefix range.
"""

from __future__ import annotations

from sidecar.lua import PACK, Script

_COMMON = r"""
local US, RS = '\31', '\30'
local function slide(ttl)
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
"""
# ``PACK`` (sidecar.lua) is defined only in the scripts that read checkpoints, not in the write
# scripts, which run on every step: each function definition is a closure made on every call.

# One checkpoint, packed: ns, id, record, writes, then the value of each channel in the order
# of the record's versions ('' for one not stored), or false: two HMGETs, whatever the thread's
# length. The record starts with "metadata \30 versions \30", the versions "channel \31
# version \31 ...": each value's field is "b \31 ns \31" and one (channel \31 version) of it,
# cut from the record as it is (no table of the versions, no split).
_LOAD = (
    PACK
    + r"""
local function load(ns, cid)
  local base = ns .. US .. cid
  local got = redis.call('HMGET', KEYS[2], 'c' .. US .. base, 'w' .. US .. base)
  local record = got[1]
  if not record then return false end
  local parts = {ns, cid, record, got[2] or ''}
  local a = string.find(record, RS, 1, true)
  local b = string.find(record, RS, a + 1, true)
  if b > a + 1 then
    local fields, n, i, pre = {}, 0, a + 1, 'b' .. US .. ns .. US
    while i < b do
      local k = string.find(record, US, string.find(record, US, i, true) + 1, true)
      if not k or k > b then k = b end
      n = n + 1
      fields[n] = pre .. string.sub(record, i, k - 1)
      i = k + 1
    end
    local vals = redis.call('HMGET', KEYS[2], unpack(fields))
    for x = 1, n do parts[x + 4] = vals[x] or '' end
  end
  return pack(parts)
end
"""
)

# The channel versions of a stored record, and its metadata JSON (for the deleting scripts).
_VERSIONS = r"""
local function split(s, sep)
  local out, i = {}, 1
  if not s or s == '' then return out end
  while true do
    local j = string.find(s, sep, i, true)
    if not j then out[#out + 1] = string.sub(s, i); return out end
    out[#out + 1] = string.sub(s, i, j - 1)
    i = j + 1
  end
end
local function versions_of(record)
  local a = string.find(record, RS, 1, true)
  local b = string.find(record, RS, a + 1, true)
  return split(string.sub(record, a + 1, b - 1), US), string.sub(record, 1, a - 1)
end
"""

# Remove checkpoints (given as ns\31id) with their writes, run references and markers, then
# the channel values no remaining checkpoint refers to. O(remaining) for the value sweep:
# deletes are rare, and a value shared with a kept checkpoint must stay.
_DROP = r"""
local function drop(bases)
  if #bases == 0 then return end
  local candidates = {}
  for _, base in ipairs(bases) do
    local ns = string.sub(base, 1, string.find(base, US, 1, true) - 1)
    local record = redis.call('HGET', KEYS[2], 'c' .. US .. base)
    if record then
      local vs, md_json = versions_of(record)
      for i = 1, #vs, 2 do candidates['b' .. US .. ns .. US .. vs[i] .. US .. vs[i + 1]] = true end
      local ok, md = pcall(cjson.decode, md_json)
      if ok and type(md) == 'table' and type(md.run_id) == 'string' then
        redis.call('ZREM', KEYS[1], '\2' .. md.run_id .. US .. base)
      end
    end
    redis.call('HDEL', KEYS[2], 'c' .. US .. base, 'w' .. US .. base, 'h' .. US .. base)
    redis.call('ZREM', KEYS[1], '\1' .. base)
  end
  local left = redis.call('ZRANGEBYLEX', KEYS[1], '[\1', '(\2')
  for _, m in ipairs(left) do
    local base = string.sub(m, 2)
    local ns = string.sub(base, 1, string.find(base, US, 1, true) - 1)
    local record = redis.call('HGET', KEYS[2], 'c' .. US .. base)
    if record then
      local vs = versions_of(record)
      for i = 1, #vs, 2 do candidates['b' .. US .. ns .. US .. vs[i] .. US .. vs[i + 1]] = nil end
    end
  end
  local gone = {}
  for f, _ in pairs(candidates) do gone[#gone + 1] = f end
  if #gone > 0 then redis.call('HDEL', KEYS[2], unpack(gone)) end
end
local function settle(ttl)
  if redis.call('ZLEXCOUNT', KEYS[1], '[\1', '(\2') == 0 then
    redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3])
  else
    slide(ttl)
  end
end
"""

# ARGV: the head "ns \31 id \31 parent \31 ttl_ms \31 run id ('' none) \31 run just registered
# ('1'/'0') \31 source is input ('1'/'0')", the record (metadata \30 versions \30 parent \30
# type \31 bytes), then (channel \31 version, value) pairs of the new versions.
# Returns the run mode (0 none, 1 fresh run, 2 resumed run), or {mode, {runs whose run index
# needs a refresh}} when some do.
PUT_CHECKPOINT = Script(
    "lg_put",
    "#!lua\n"
    + _COMMON
    + r"""
local ns, cid, parent, ttl, run, registered, input = string.match(ARGV[1],
  '^([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)$')
local base = ns .. US .. cid
local fields = {'c' .. US .. base, ARGV[2]}
for i = 3, #ARGV, 2 do
  fields[#fields + 1] = 'b' .. US .. ns .. US .. ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('ZADD', KEYS[1], 0, '\1' .. base)
local stale = {}
if run ~= '' then
  redis.call('ZADD', KEYS[1], 0, '\2' .. run .. US .. base)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if registered == '1' then
    redis.call('ZADD', KEYS[3], now, run)
  else
    redis.call('ZADD', KEYS[3], 'NX', 0, run)
  end
  stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - math.floor(tonumber(ttl) / 2),
    'LIMIT', 0, 8)
  for _, r in ipairs(stale) do redis.call('ZADD', KEYS[3], now, r) end
end
local mode = 0
if ns == '' then
  if input == '1' then
    mode = 1
  elseif parent ~= '' and redis.call('HDEL', KEYS[2], 'h' .. US .. US .. parent) == 1 then
    mode = 2
  end
end
slide(ttl)
if #stale == 0 then return mode end
return {mode, stale}
""",
)

# ARGV: ns, id, ttl_ms, halts ('1' when an ERROR or INTERRUPT is among them), the writes as
# one string of length-prefixed records, appended to the checkpoint's writes field. The reader
# keeps the first of a regular (task, idx) and the last of a special one (negative idx), as
# InMemorySaver does. Returns the run mode: 2 when this resumes a halted root checkpoint.
PUT_WRITES = Script(
    "lg_put_writes",
    "#!lua\n"
    + _COMMON
    + r"""
local ns, cid = ARGV[1], ARGV[2]
local base = ns .. US .. cid
local f = 'w' .. US .. base
local listed = redis.call('HGET', KEYS[2], f)
if listed then
  redis.call('HSET', KEYS[2], f, listed .. ARGV[5])
else
  redis.call('HSET', KEYS[2], f, ARGV[5])
end
local mode = 0
if ns == '' then
  local hf = 'h' .. US .. base
  if redis.call('HDEL', KEYS[2], hf) == 1 then mode = 2 end
  if ARGV[4] == '1' then redis.call('HSET', KEYS[2], hf, '1') end
end
slide(ARGV[3])
return mode
""",
)

_GET_BODY = r"""
local ns, cid = ARGV[1], ARGV[2]
if cid == '' then
  local top = redis.call('ZREVRANGEBYLEX', KEYS[1], '(\1' .. ns .. '\32', '[\1' .. ns .. US,
    'LIMIT', 0, 1)
  if #top == 0 then return false end
  cid = string.sub(top[1], #ns + 3)
end
local found = load(ns, cid)
if found and ARGV[3] ~= '' then slide(ARGV[3]) end
return found
"""
# ARGV: ns, id ('' = the latest), ttl_ms to slide ('' = no refresh). One checkpoint or nil.
GET_TUPLE = Script("lg_get_tuple", "#!lua flags=no-writes\n" + _COMMON + _LOAD + _GET_BODY)
GET_TUPLE_REFRESH = Script("lg_get_tuple", "#!lua\n" + _COMMON + _LOAD + _GET_BODY)

_LIST_BODY = r"""
local function same(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) ~= 'table' then return a == b end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k, _ in pairs(b) do if a[k] == nil then return false end end
  return true
end
local function matches(base, filter)
  local record = redis.call('HGET', KEYS[2], 'c' .. US .. base)
  if not record then return false end
  local ok, md = pcall(cjson.decode, string.sub(record, 1, string.find(record, RS, 1, true) - 1))
  if not ok or type(md) ~= 'table' then return false end
  for k, want in pairs(filter) do
    local have = md[k]
    if want == cjson.null then
      if have ~= nil and have ~= cjson.null then return false end
    elseif have == nil or not same(have, want) then
      return false
    end
  end
  return true
end
local one_ns, ns, before, cursor = ARGV[1] == '1', ARGV[2], ARGV[3], ARGV[4]
local want, budget = tonumber(ARGV[5]), tonumber(ARGV[6])
local filter = nil
if ARGV[7] ~= '' then filter = cjson.decode(ARGV[7]) end
local low, high
if one_ns then
  low, high = '[\1' .. ns .. US, '(\1' .. ns .. '\32'
  if before ~= '' then high = '(\1' .. ns .. US .. before end
else
  low, high = '[\1', '(\2'
end
if cursor ~= '' then high = '(' .. cursor end
local out, scanned, last = {}, 0, ''
while scanned < budget do
  local chunk = math.min(budget - scanned, 64)
  if filter == nil and before == '' and want > 0 then chunk = math.min(chunk, want - #out) end
  local members = redis.call('ZREVRANGEBYLEX', KEYS[1], high, low, 'LIMIT', 0, chunk)
  for _, m in ipairs(members) do
    scanned = scanned + 1
    last = m
    local base = string.sub(m, 2)
    local sep = string.find(base, US, 1, true)
    local mns, mid = string.sub(base, 1, sep - 1), string.sub(base, sep + 1)
    if (before == '' or mid < before) and (filter == nil or matches(base, filter)) then
      out[#out + 1] = load(mns, mid)
      if want > 0 and #out >= want then
        if ARGV[8] ~= '' then slide(ARGV[8]) end
        return {pack(out), m}
      end
    end
  end
  if #members < chunk then last = ''; break end
  high = '(' .. last
end
if ARGV[8] ~= '' and #out > 0 then slide(ARGV[8]) end
return {pack(out), last}
"""
# ARGV: one namespace ('1') or all ('0'), ns, before id (''), cursor (exclusive upper member,
# ''), wanted (0 = all), scan budget (members looked at in this call), filter JSON (''), ttl_ms
# to slide (''). Returns {checkpoints newest first (packed), cursor ('' when exhausted)}.
LIST = Script("lg_list", "#!lua flags=no-writes\n" + _COMMON + _LOAD + _LIST_BODY)
LIST_REFRESH = Script("lg_list", "#!lua\n" + _COMMON + _LOAD + _LIST_BODY)

# Every key of the thread, at once. Returns the number of keys removed.
DELETE_THREAD = Script(
    "lg_delete_thread",
    "#!lua\nreturn redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3])\n",
)

# ARGV: run id, ttl_ms. Removes the thread's checkpoints of that run (idempotent).
DELETE_RUN_IN_THREAD = Script(
    "lg_delete_for_runs",
    "#!lua\n"
    + _COMMON
    + _VERSIONS
    + _DROP
    + r"""
local run = ARGV[1]
local low, high = '[\2' .. run .. US, '(\2' .. run .. '\32'
local refs = redis.call('ZRANGEBYLEX', KEYS[1], low, high)
local bases = {}
for _, ref in ipairs(refs) do bases[#bases + 1] = string.sub(ref, #run + 3) end
drop(bases)
redis.call('ZREMRANGEBYLEX', KEYS[1], low, high)
redis.call('ZREM', KEYS[3], run)
settle(ARGV[2])
return #refs
""",
)

# ARGV: strategy ('keep_latest' or 'delete'), ttl_ms. Returns the checkpoints removed.
PRUNE_THREAD = Script(
    "lg_prune",
    "#!lua\n"
    + _COMMON
    + _VERSIONS
    + _DROP
    + r"""
local all = redis.call('ZRANGEBYLEX', KEYS[1], '[\1', '(\2')
if ARGV[1] == 'delete' then
  redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3])
  return #all
end
local bases, prev_ns, prev = {}, nil, nil
for _, m in ipairs(all) do
  local base = string.sub(m, 2)
  local ns = string.sub(base, 1, string.find(base, US, 1, true) - 1)
  if prev and prev_ns == ns then bases[#bases + 1] = prev end
  prev_ns, prev = ns, base
end
drop(bases)
settle(ARGV[2])
return #bases
""",
)

# Copy, step 1 (source slot): the thread's keys as DUMP payloads and its runs, or nil.
DUMP_THREAD = Script(
    "lg_copy_thread",
    r"""#!lua flags=no-writes
local idx = redis.call('DUMP', KEYS[1])
if not idx then return false end
return {idx, redis.call('DUMP', KEYS[2]) or '', redis.call('DUMP', KEYS[3]) or '',
  redis.call('ZRANGE', KEYS[3], 0, -1)}
""",
)

# Copy, step 2 (target slot). ARGV: ttl_ms, idx, state, runs payloads. Replaces the target
# thread; its runs are marked for a run-index refresh (score 0) until step 3 has registered them.
RESTORE_THREAD = Script(
    "lg_copy_thread",
    r"""#!lua
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3])
redis.call('RESTORE', KEYS[1], ARGV[1], ARGV[2], 'REPLACE')
if ARGV[3] ~= '' then redis.call('RESTORE', KEYS[2], ARGV[1], ARGV[3], 'REPLACE') end
if ARGV[4] ~= '' then
  redis.call('RESTORE', KEYS[3], ARGV[1], ARGV[4], 'REPLACE')
  for _, r in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do redis.call('ZADD', KEYS[3], 0, r) end
end
return 1
""",
)

# Run index (the run's slot). ARGV: ttl_ms, thread ids. Adds them and slides the index's TTL.
REGISTER_RUN = Script(
    "lg_register_run",
    r"""#!lua
for i = 2, #ARGV do redis.call('SADD', KEYS[1], ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
""",
)

# Run index: the thread ids of a run.
RUN_THREADS = Script(
    "lg_run_threads",
    "#!lua flags=no-writes\nreturn redis.call('SMEMBERS', KEYS[1])\n",
)

# Run index: forget threads whose checkpoints of the run are gone. ARGV: thread ids.
FORGET_RUN_THREADS = Script(
    "lg_forget_run_threads",
    r"""#!lua
for i = 1, #ARGV do redis.call('SREM', KEYS[1], ARGV[i]) end
return redis.call('SCARD', KEYS[1])
""",
)
