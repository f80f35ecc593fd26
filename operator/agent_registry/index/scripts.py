"""The Lua scripts that read and change the index.

Every change is a script so it is atomic: an upsert moves an agent between sets in one
step, and a reader resolves the current generation and reads it in one step, so a
resync that switches generations (and then deletes the old one) can never be seen
half-way. Scripts build key names from the generation they find, which is fine on a
single Redis (the supported setup) but not on Redis Cluster.
"""

from __future__ import annotations

from typing import Final

from agent_registry.index import keys as k

_PRELUDE: Final = f"""
local META, REC, NAMES, MEM, KEYREG, TOUCHED, PICKS, CARDS =
  '{k.META}', '{k.RECORDS}', '{k.NAMES}', '{k.MEMBERSHIPS}', '{k.KEY_REGISTRY}', '{k.TOUCHED}', '{k.PICKS}',
  '{k.CARDS}'
"""

_WRITE_HELPERS: Final = r"""
local function lines(text)
  local out = {}
  for part in string.gmatch(text, '[^\n]+') do out[#out + 1] = part end
  return out
end

-- Take the agent out of every set and name entry its previous record put it in, except `keep`.
local function leave_old(base, id, keep)
  local old = redis.call('HGET', base .. MEM, id)
  if not old then return end
  local entries = lines(old)
  -- Only if the name still points here: a new agent may have taken the name since.
  if not keep[entries[1]] and redis.call('HGET', base .. NAMES, entries[1]) == id then
    redis.call('HDEL', base .. NAMES, entries[1])
  end
  for i = 2, #entries do
    if not keep[entries[i]] then redis.call('SREM', base .. entries[i], id) end
  end
end

-- `expired` lists keys this script call already gave a TTL (and registered), so a batch
-- of records sharing sets pays for that once. `card` is the agent's card JSON, '' for none.
local function put(base, ttl, id, record, membership, card, expired)
  local entries = lines(membership)
  local keep = {}
  for _, entry in ipairs(entries) do keep[entry] = true end
  leave_old(base, id, keep)
  for i = 2, #entries do
    local key = base .. entries[i]
    redis.call('SADD', key, id)
    if not expired[key] then
      redis.call('EXPIRE', key, ttl)
      redis.call('SADD', base .. KEYREG, key)
      expired[key] = true
    end
  end
  redis.call('HSET', base .. NAMES, entries[1], id)
  redis.call('HSET', base .. MEM, id, membership)
  if card == '' then
    redis.call('HDEL', base .. CARDS, id)
  else
    redis.call('HSET', base .. CARDS, id, card)
    -- The hash may have been created just now, after this call gave the others their TTL.
    if not expired[base .. CARDS] then
      redis.call('EXPIRE', base .. CARDS, ttl)
      expired[base .. CARDS] = true
    end
  end
  -- A new record (a renewal with the agent's own load) replaces the routes' estimate.
  redis.call('HDEL', base .. PICKS, id)
  if redis.call('HSET', base .. REC, id, record) == 1 then
    redis.call('HINCRBY', base .. META, 'agents', 1)
  end
  if not expired[base] then
    for _, suffix in ipairs({NAMES, MEM, REC, KEYREG}) do redis.call('EXPIRE', base .. suffix, ttl) end
    expired[base] = true
  end
end

-- The change feed (``changes``): one entry per change, capped near `kept` entries.
-- It expires with the index (a stopped operator leaves neither behind for ever).
local function record_change(stream, kept, ttl, kind, id, old, new)
  redis.call('XADD', stream, 'MAXLEN', '~', kept, '*', 'kind', kind, 'id', id, 'old', old or '', 'new', new or '')
  redis.call('EXPIRE', stream, ttl)
end

-- The agent's record in the live generation (what watchers were told last), or false.
local function live_record(reached, id)
  if #reached > 0 and not reached[1][3] then return redis.call('HGET', reached[1][1] .. REC, id) end
  return false
end

local function drop(base, id)
  leave_old(base, id, {})
  redis.call('HDEL', base .. MEM, id)
  redis.call('HDEL', base .. CARDS, id)
  redis.call('HDEL', base .. PICKS, id)
  if redis.call('HDEL', base .. REC, id) == 1 then
    redis.call('HINCRBY', base .. META, 'agents', -1)
  end
end

-- A live change goes to the current generation and to every generation a resync is
-- building, so a resync cannot lose changes made while it listed and loaded. Returns
-- {base, ttl, pending} triples. A generation whose marker is gone is lost: no writes.
local function targets(current_key, pending_key, gens, ttl, lease)
  local out = {}
  local current = redis.call('GET', current_key)
  if current and redis.call('EXISTS', gens .. current .. ':' .. META) == 1 then
    out[#out + 1] = {gens .. current .. ':', ttl, false}
  end
  for _, gen in ipairs(redis.call('SMEMBERS', pending_key)) do
    if redis.call('EXISTS', gens .. gen .. ':' .. META) == 1 then
      out[#out + 1] = {gens .. gen .. ':', lease, true}
    else
      redis.call('SREM', pending_key, gen)  -- its resync died; its keys expire or get collected
    end
  end
  return out
end

-- In a pending generation, a live change outranks the resync's snapshot of the same agent.
local function mark_touched(target, id)
  if target[3] then
    redis.call('SADD', target[1] .. TOUCHED, id)
    redis.call('EXPIRE', target[1] .. TOUCHED, target[2])
  end
end
"""

# KEYS: current, pending, the change feed. ARGV: generations prefix, ttl, lease, id, record
# JSON, memberships, card JSON ('' for none), the change's kind ('' for a heartbeat that
# changed nothing a watcher sees), entries the feed keeps.
# Returns how many generations it reached (0: there is no index).
# The feed gets an entry only for a change to the live generation: a resync's generation
# goes live with a relist (COMMIT). An agent the live generation lacks is new to watchers
# whatever the operator thought.
UPSERT: Final = (
    _PRELUDE
    + _WRITE_HELPERS
    + """
local reached = targets(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
local old = live_record(reached, ARGV[4])
for _, target in ipairs(reached) do
  put(target[1], target[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7], {})
  mark_touched(target, ARGV[4])
end
if #reached > 0 and not reached[1][3] then
  if not old then
    record_change(KEYS[3], ARGV[9], ARGV[2], 'registered', ARGV[4], '', ARGV[5])
  elseif ARGV[8] ~= '' then
    record_change(KEYS[3], ARGV[9], ARGV[2], ARGV[8], ARGV[4], old, ARGV[5])
  end
end
return #reached
"""
)

# KEYS: current, pending, the change feed. ARGV: generations prefix, ttl, lease, id, entries
# the feed keeps.
REMOVE: Final = (
    _PRELUDE
    + _WRITE_HELPERS
    + """
local reached = targets(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
local old = live_record(reached, ARGV[4])
for _, target in ipairs(reached) do
  drop(target[1], ARGV[4])
  mark_touched(target, ARGV[4])  -- a tombstone: the snapshot must not bring the agent back
end
if old then record_change(KEYS[3], ARGV[5], ARGV[2], 'removed', ARGV[4], old, '') end
return #reached
"""
)

# KEYS: pending. ARGV: generations prefix, gen, lease, then (id, record JSON, memberships,
# card JSON or '') quadruples.
# Returns how many records it wrote, or -1 when the resync's lease ran out.
LOAD: Final = (
    _PRELUDE
    + _WRITE_HELPERS
    + """
local base = ARGV[1] .. ARGV[2] .. ':'
if redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 0 or redis.call('EXISTS', base .. META) == 0 then
  return -1
end
local loaded, expired = 0, {}
for i = 4, #ARGV, 4 do
  if redis.call('SISMEMBER', base .. TOUCHED, ARGV[i]) == 0 then
    put(base, ARGV[3], ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], expired)
    loaded = loaded + 1
  end
end
return loaded
"""
)

# KEYS: current, pending, the change feed. ARGV: generations prefix, gen, ttl, entries the
# feed keeps, the live generation the feed describes whole ('' when the writer cannot say).
# Returns 1, or -1 when the resync's lease ran out (changes may have missed it).
# The new generation may differ from the old in ways the feed never recorded (it was
# built from a listing), so watchers are told to list again, unless the writer vouches
# that the feed describes the live generation whole and it is still the live one.
COMMIT: Final = (
    _PRELUDE
    + _WRITE_HELPERS
    + """
local base = ARGV[1] .. ARGV[2] .. ':'
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 0 or redis.call('EXISTS', base .. META) == 0 then
  return -1
end
local previous = redis.call('GET', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('HSET', base .. META, 'state', 'live')
redis.call('EXPIRE', base .. META, ARGV[3])
redis.call('UNLINK', base .. TOUCHED)
if ARGV[5] == '' or previous ~= ARGV[5] then
  record_change(KEYS[3], ARGV[4], ARGV[3], 'relist', '', '', '')
end
return 1
"""
)

# KEYS: current, pending, then candidate keys from SCAN. ARGV: generations prefix.
# Deletes the candidates that belong to neither the live generation nor a pending one.
# Deciding and deleting in one script means a resync that starts meanwhile keeps its keys.
COLLECT: Final = """
local live = {}
local current = redis.call('GET', KEYS[1])
if current then live[current] = true end
for _, gen in ipairs(redis.call('SMEMBERS', KEYS[2])) do live[gen] = true end
local skip = #ARGV[1]
local deleted = 0
for i = 3, #KEYS do
  local gen = string.match(string.sub(KEYS[i], skip + 1), '^([^:]+):')
  if gen and not live[gen] then
    redis.call('UNLINK', KEYS[i])
    deleted = deleted + 1
  end
end
return deleted
"""

_READ_HELPERS: Final = """
-- The live generation's key prefix, or nil when there is no intact index.
local function live_base(current_key, gens)
  local gen = redis.call('GET', current_key)
  if not gen then return nil end
  local base = gens .. gen .. ':'
  if redis.call('EXISTS', base .. META) == 0 then return nil end
  return base
end

-- The sets named by ARGV[first..] in the generation at `base`.
local function query_sets(base, first)
  local sets = {}
  for i = first, #ARGV do sets[#sets + 1] = base .. ARGV[i] end
  return sets
end

-- The ids in every one of `sets`.
local function members(sets)
  if #sets == 1 then return redis.call('SMEMBERS', sets[1]) end
  return redis.call('SINTER', unpack(sets))
end
"""

# The read scripts return -1 when there is no index; otherwise the record JSON or nil.

# KEYS: current. ARGV: generations prefix, agent id.
GET: Final = (
    _PRELUDE
    + _READ_HELPERS
    + """
local base = live_base(KEYS[1], ARGV[1])
if not base then return -1 end
return redis.call('HGET', base .. REC, ARGV[2])
"""
)

# KEYS: current. ARGV: generations prefix, name field.
GET_BY_NAME: Final = (
    _PRELUDE
    + _READ_HELPERS
    + """
local base = live_base(KEYS[1], ARGV[1])
if not base then return -1 end
local id = redis.call('HGET', base .. NAMES, ARGV[2])
if not id then return false end
return redis.call('HGET', base .. REC, id)
"""
)

# KEYS: current. ARGV: generations prefix, "count", "records" or "cards", then set suffixes (at
# least one). Returns -1, a count, the list of record JSONs, or ("cards") the records of the
# agents that have a card, each followed by its card JSON.
QUERY: Final = (
    _PRELUDE
    + _READ_HELPERS
    + """
local base = live_base(KEYS[1], ARGV[1])
if not base then return -1 end
local sets = query_sets(base, 3)
if #sets == 1 and ARGV[2] == 'count' then return redis.call('SCARD', sets[1]) end
local ids = members(sets)
if ARGV[2] == 'count' then return #ids end
local out = {}
-- unpack() is bounded by Lua's C stack, so fetch in chunks.
for first = 1, #ids, 500 do
  local chunk = {}
  for i = first, math.min(first + 499, #ids) do chunk[#chunk + 1] = ids[i] end
  local records = redis.call('HMGET', base .. REC, unpack(chunk))
  if ARGV[2] == 'cards' then
    local cards = redis.call('HMGET', base .. CARDS, unpack(chunk))
    for i = 1, #chunk do
      if records[i] and cards[i] then
        out[#out + 1] = records[i]
        out[#out + 1] = cards[i]
      end
    end
  else
    for _, record in ipairs(records) do
      if record then out[#out + 1] = record end
    end
  end
end
return out
"""
)

# KEYS: current. ARGV: generations prefix, agent id.
# Returns -1 (no index), nil (no such agent), or {record JSON, card JSON} ({record JSON}
# when the agent has no card).
CARD: Final = (
    _PRELUDE
    + _READ_HELPERS
    + """
local base = live_base(KEYS[1], ARGV[1])
if not base then return -1 end
local record = redis.call('HGET', base .. REC, ARGV[2])
if not record then return false end
local card = redis.call('HGET', base .. CARDS, ARGV[2])
if not card then return {record} end
return {record, card}
"""
)

# KEYS: current, the question's round-robin counter.
# ARGV: [1] generations prefix, [2] counter and picks TTL, [3] sticky key ('' for none),
#   [4] a random seed in [1, 2^31 - 2], [5] the load-reporting set, [6] the full set,
#   [7] d, the number of degraded-capability sets, [8 .. 7+d] them,
#   [8+d] 'sets' or 'ids', then set suffixes (at least one) or candidate ids.
# Returns -1 (no index), nil (no candidate), or {picked id, its record JSON or nil}.
#
# The candidates are the intersection of the sets (or the ids given). Among them the
# pick prefers, in order: free (not full) over full, then no wanted capability degraded
# over one degraded; within the best such group it takes the sticky key's rendezvous
# winner, else the less loaded of two drawn at random when the namespace has load
# reports, else the next by the counter (round robin in intersection order, which holds
# while the sets do not change; the counter is shared by every facade replica). A pick by
# load counts against the picked agent until its next record, so picks between two
# heartbeats do not all land on the agent that was idlest at the last one.
ROUTE: Final = (
    _PRELUDE
    + _READ_HELPERS
    + """
local base = live_base(KEYS[1], ARGV[1])
if not base then return -1 end
local degraded_sets = tonumber(ARGV[7])
local source = 8 + degraded_sets
local ids
if ARGV[source] == 'sets' then
  ids = members(query_sets(base, source + 1))
else
  ids = {}
  for i = source + 1, #ARGV do ids[#ids + 1] = ARGV[i] end
end
if #ids == 0 then return false end

-- Park-Miller: enough draws from one seed, exact in Lua's doubles.
local seed = tonumber(ARGV[4])
local function draw(n)
  seed = (seed * 16807) % 2147483647
  return (seed % n) + 1
end

-- Penalties: 1 for a wanted capability degraded, 2 for full (so 3 is both).
local penalty, penalised = {}, false
for i = 8, 7 + degraded_sets do
  for _, id in ipairs(redis.call('SMEMBERS', base .. ARGV[i])) do penalty[id] = 1; penalised = true end
end
for _, id in ipairs(redis.call('SMEMBERS', base .. ARGV[6])) do
  penalty[id] = (penalty[id] or 0) + 2; penalised = true
end

-- `eligible(id)`: in the best group. Usually nobody is penalised and that is everyone;
-- else a few draws find an unpenalised candidate without walking them all.
local function everyone() return true end
local eligible = everyone
if penalised then
  for _ = 1, 8 do
    if not penalty[ids[draw(#ids)]] then eligible = function(id) return not penalty[id] end; break end
  end
  if eligible == everyone then
    local best, group = 4, {}
    for _, id in ipairs(ids) do
      local p = penalty[id] or 0
      if p < best then best, group = p, {id} elseif p == best then group[#group + 1] = id end
    end
    ids = group
  end
end

local function answer(id, record)
  if record == nil then record = redis.call('HGET', base .. REC, id) end
  return {id, record}
end

if ARGV[3] ~= '' then
  local winner, top = nil, ''
  for _, id in ipairs(ids) do
    if eligible(id) then
      local score = redis.sha1hex(ARGV[3] .. '\\n' .. id)
      if score > top then winner, top = id, score end
    end
  end
  return answer(winner)
end

if redis.call('SCARD', base .. ARGV[5]) > 0 then
  local drawn = {}
  for _ = 1, 16 do
    local id = ids[draw(#ids)]
    if eligible(id) and id ~= drawn[1] then drawn[#drawn + 1] = id end
    if #drawn == 2 or #drawn == #ids then break end
  end
  if #drawn == 0 then
    for _, id in ipairs(ids) do if eligible(id) then drawn[1] = id; break end end
  end
  local records = redis.call('HMGET', base .. REC, unpack(drawn))
  local picks = redis.call('HMGET', base .. PICKS, unpack(drawn))
  local best, best_use, best_reports = 1, nil, false
  for i = 1, #drawn do
    -- An agent without a load report counts as half busy: neither preferred nor avoided.
    local use, reports = 0.5, false
    if records[i] then
      -- The record's first field (``IndexedAgent.load``, serialised without spaces): read
      -- at its start, where nothing inside the record can imitate it, and cheaper than
      -- decoding the whole record.
      local in_flight, most = string.match(records[i], '^{"load":{"in_flight":(%d+),"max":(%d+)}')
      if in_flight then
        use, reports = (tonumber(in_flight) + (tonumber(picks[i]) or 0)) / tonumber(most), true
      end
    end
    if best_use == nil or use < best_use then best, best_use, best_reports = i, use, reports end
  end
  if best_reports then
    redis.call('HINCRBY', base .. PICKS, drawn[best], 1)
    redis.call('EXPIRE', base .. PICKS, ARGV[2])
  end
  return answer(drawn[best], records[best] or nil)
end

local turn = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
for step = 0, #ids - 1 do
  local id = ids[((turn + step) % #ids) + 1]
  if eligible(id) then return answer(id) end
end
return false
"""
)

# KEYS: current. ARGV: generations prefix. 1 when the pointer, the marker and the record
# count agree; 0 when any is missing or off (evicted, expired, flushed).
IS_INTACT: Final = (
    _PRELUDE
    + _READ_HELPERS
    + """
local base = live_base(KEYS[1], ARGV[1])
if not base then return 0 end
local agents = tonumber(redis.call('HGET', base .. META, 'agents') or '0')
if redis.call('HLEN', base .. REC) ~= agents then return 0 end
return 1
"""
)
