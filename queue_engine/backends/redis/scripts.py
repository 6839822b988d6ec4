"""Lua scripts of the Redis backend: every state change that touches more than one key.

Each script runs atomically on the server, so two hosts never take the same message and no
reader sees half a change. Conventions shared by every script:

* ``KEYS`` are the queue's keys in the order of :data:`KEY_NAMES` (all under one hash tag,
  so they live in one Redis Cluster slot). ``ARGV[1]`` is the prefix of the per-message
  hashes (``<base>:m:``); message keys carry the same hash tag.
* Time comes from ``redis.call('TIME')``: one clock for every host. Times are kept as
  integer microseconds (exact in a Lua double) in scores and hash fields, and as
  ``"<seconds>.<6 digits>"`` text where Python reads them back as epoch seconds.
* Message JSON is opaque to Lua (lua-cjson would round numbers to 14 digits); only the
  error history, a list of strings, goes through cjson.
* A script answers a status word first: ``ok``, ``noqueue``, ``lost``, ``stale``,
  ``inflight``, ``notfound`` or ``dup``; the backend maps it to the error tree.

Per-message hash fields: ``rec`` (record JSON without uuid and inserted_at), ``ins``
(inserted_at text), ``seq`` (queue order), ``att`` (attempts), ``alias``, ``dis`` ("1" when
disabled), ``du`` (deferred_until, us, "" for none), ``nb`` (not before, from a delayed
release), ``lease`` (present while a reservation counts: from reserve until ack, release,
fail, update or the next reserve), ``err`` (JSON list), ``fat`` (failed_at, us).
"""

from __future__ import annotations

__all__ = ["KEY_NAMES", "SCRIPTS"]

#: Suffixes of a queue's keys, in the order scripts receive them as KEYS.
KEY_NAMES = ("status", "seq", "pending", "ready", "deferred", "disabled", "inflight", "failed", "alias")

_PRELUDE = r"""
local K_STATUS, K_SEQ, K_PENDING, K_READY, K_DEFERRED, K_DISABLED, K_INFLIGHT, K_FAILED, K_ALIAS =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local MP = ARGV[1]

-- now in microseconds, and as "<seconds>.<micro>" text (exact: built from TIME's strings)
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2]), string.format('%s.%06d', t[1], tonumber(t[2]))
end

local function exists()
  return redis.call('EXISTS', K_STATUS) == 1
end

local function ensure_queue(nowtxt)
  if exists() then return 0 end
  redis.call('HSET', K_STATUS, 'created', nowtxt, 'modified', nowtxt, 'attrs', '{}')
  return 1
end

local function touch(nowtxt)
  redis.call('HSET', K_STATUS, 'modified', nowtxt)
end

local function in_flight(u, now)
  local s = redis.call('ZSCORE', K_INFLIGHT, u)
  return s and tonumber(s) > now
end

-- due deferred messages and expired leases go to ready at their original place (seq)
local function promote(now)
  for _, key in ipairs({K_DEFERRED, K_INFLIGHT}) do
    local due = redis.call('ZRANGEBYSCORE', key, '-inf', now)
    if #due > 0 then
      for i = 1, #due do
        redis.call('ZADD', K_READY, redis.call('HGET', MP .. due[i], 'seq'), due[i])
      end
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    end
  end
end

-- put a pending, unreserved message in ready, deferred or disabled by its fields
local function place(u, now)
  local f = redis.call('HMGET', MP .. u, 'seq', 'dis', 'du', 'nb')
  if f[2] == '1' then
    redis.call('ZADD', K_DISABLED, f[1], u)
    return
  end
  local due = math.max(tonumber(f[3] or '') or 0, tonumber(f[4] or '') or 0)
  if due > now then
    redis.call('ZADD', K_DEFERRED, due, u)
  else
    redis.call('ZADD', K_READY, f[1], u)
  end
end

local function unplace(u)
  redis.call('ZREM', K_READY, u)
  redis.call('ZREM', K_DEFERRED, u)
  redis.call('ZREM', K_DISABLED, u)
  redis.call('ZREM', K_INFLIGHT, u)
end

local function free_alias(u)
  local a = redis.call('HGET', MP .. u, 'alias')
  if a and redis.call('HGET', K_ALIAS, a) == u then
    redis.call('HDEL', K_ALIAS, a)
  end
end

-- remove a pending message for good
local function drop(u)
  free_alias(u)
  unplace(u)
  redis.call('ZREM', K_PENDING, u)
  redis.call('DEL', MP .. u)
end

local function push_error(m, e)
  local cur = redis.call('HGET', m, 'err')
  local list = {}
  if cur and cur ~= '' then list = cjson.decode(cur) end
  list[#list + 1] = e
  redis.call('HSET', m, 'err', cjson.encode(list))
end
"""

# ARGV: MP, on_duplicate, n, then per message: uuid, alias ("" none), rec, dis, du
_ADD = r"""
local now, nowtxt = clock()
local on_dup, n = ARGV[2], tonumber(ARGV[3])
local function arg(i, k) return ARGV[3 + (i - 1) * 5 + k] end
if on_dup == 'error' then
  local seen = {}
  for i = 1, n do
    local u, a = arg(i, 1), arg(i, 2)
    if a ~= '' then
      local holder = redis.call('HGET', K_ALIAS, a)
      if holder == u then holder = false end  -- a retried call that already stored it
      if holder or seen[a] then return {'dup', a, holder or ''} end
      seen[a] = true
    end
  end
end
local created = ensure_queue(nowtxt)
local out = {'ok', created}
local last_u, last_a = nil, nil
for i = 1, n do
  local u, a, rec, dis, du = arg(i, 1), arg(i, 2), arg(i, 3), arg(i, 4), arg(i, 5)
  local holder = false
  if a ~= '' then holder = redis.call('HGET', K_ALIAS, a) end
  local uid = u
  if redis.call('EXISTS', MP .. u) == 1 then
    uid = u  -- the reply of an earlier try was lost: it is stored already
  elseif holder and on_dup == 'ignore' then
    uid = holder
  elseif holder and on_dup == 'replace' and not in_flight(holder, now) then
    local m = MP .. holder
    redis.call('HSET', m, 'rec', rec, 'dis', dis, 'du', du)
    redis.call('HDEL', m, 'lease')
    unplace(holder)
    place(holder, now)
    uid = holder
  else
    local seq = redis.call('INCR', K_SEQ)
    local m = MP .. u
    redis.call('HSET', m, 'rec', rec, 'ins', nowtxt, 'seq', seq, 'att', 0, 'dis', dis, 'du', du)
    if a ~= '' then
      redis.call('HSET', m, 'alias', a)
      redis.call('HSET', K_ALIAS, a, u)
    end
    redis.call('ZADD', K_PENDING, seq, u)
    place(u, now)
    last_u, last_a = u, a
  end
  out[#out + 1] = uid
  out[#out + 1] = redis.call('HGET', MP .. uid, 'ins')
end
if last_u then
  redis.call('HSET', K_STATUS, 'li_uuid', last_u, 'li_alias', last_a, 'li_ts', nowtxt)
end
touch(nowtxt)
return out
"""

# ARGV: MP, mode ("get" or "reserve"), lease in us
_TAKE = r"""
if not exists() then return false end
local now, nowtxt = clock()
promote(now)
local first = redis.call('ZRANGE', K_READY, 0, 0)
if #first == 0 then return false end
local u = first[1]
local m = MP .. u
if ARGV[2] == 'get' then
  local f = redis.call('HMGET', m, 'rec', 'ins', 'att')
  drop(u)
  touch(nowtxt)
  return {u, f[1], f[2], f[3]}
end
local deadline = now + tonumber(ARGV[3])
redis.call('ZREM', K_READY, u)
redis.call('ZADD', K_INFLIGHT, deadline, u)
local att = redis.call('HINCRBY', m, 'att', 1)
redis.call('HSET', m, 'lease', deadline)
touch(nowtxt)
local f = redis.call('HMGET', m, 'rec', 'ins')
return {u, f[1], f[2], tostring(att)}
"""

# ARGV: MP, op ("ack", "release" or "fail"), uuid, attempt ("" for the current one),
#       delay in us, has_error ("0"/"1"), error, processed ("0"/"1", ack only), alias ("" none)
_SETTLE = r"""
if not exists() then return {'noqueue'} end
local op, u, attempt = ARGV[2], ARGV[3], ARGV[4]
local m = MP .. u
local f = redis.call('HMGET', m, 'lease', 'att')
if not f[1] then return {'lost'} end
if attempt ~= '' and f[2] ~= attempt then return {'stale', f[2]} end
local now, nowtxt = clock()
if op == 'ack' then
  drop(u)
  if ARGV[8] == '1' then  -- ack(processed=True): the last processed message, in the same call
    redis.call('HSET', K_STATUS, 'lp_uuid', u, 'lp_alias', ARGV[9], 'lp_ts', nowtxt)
  end
elseif op == 'release' then
  redis.call('HDEL', m, 'lease')
  unplace(u)
  if ARGV[6] == '1' then push_error(m, ARGV[7]) end
  local delay = tonumber(ARGV[5])
  if delay > 0 then redis.call('HSET', m, 'nb', now + delay) else redis.call('HDEL', m, 'nb') end
  place(u, now)
else
  push_error(m, ARGV[7])
  free_alias(u)
  unplace(u)
  redis.call('ZREM', K_PENDING, u)
  redis.call('HDEL', m, 'lease', 'nb')
  redis.call('HSET', m, 'fat', now)
  redis.call('ZADD', K_FAILED, now, u)
end
touch(nowtxt)
return {'ok'}
"""

# ARGV: MP. Counts as the memory backend defines them, plus the status hash.
_STATUS = r"""
if not exists() then return {'noqueue'} end
local now = clock()
local expired = redis.call('ZCOUNT', K_INFLIGHT, '-inf', now)
local due = redis.call('ZCOUNT', K_DEFERRED, '-inf', now)
return {
  'ok',
  redis.call('ZCARD', K_READY) + expired + due,
  redis.call('ZCARD', K_DEFERRED) - due,
  redis.call('ZCARD', K_DISABLED),
  redis.call('ZCARD', K_INFLIGHT) - expired,
  redis.call('ZCARD', K_FAILED),
  redis.call('HGETALL', K_STATUS),
}
"""

# ARGV: MP, attributes JSON to write, check ("0"/"1"), expected current JSON (compare and set)
_SET_ATTRS = r"""
if not exists() then return {'noqueue'} end
if ARGV[3] == '1' and redis.call('HGET', K_STATUS, 'attrs') ~= ARGV[4] then return {'changed'} end
local _, nowtxt = clock()
redis.call('HSET', K_STATUS, 'attrs', ARGV[2])
touch(nowtxt)
return {'ok'}
"""

# ARGV: MP, then pairs of key, JSON text ("" deletes the key). Each metadata key is its own
# status field "meta:<key>" holding JSON text, so Lua never decodes it (cjson would turn an
# empty list into an object).
_SET_META = r"""
if not exists() then return {'noqueue'} end
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', K_STATUS, 'meta:' .. ARGV[i])
  else
    redis.call('HSET', K_STATUS, 'meta:' .. ARGV[i], ARGV[i + 1])
  end
end
return {'ok'}
"""

# ARGV: MP, uuid, alias ("" for none)
_LAST_PROCESSED = r"""
if not exists() then return {'noqueue'} end
local _, nowtxt = clock()
redis.call('HSET', K_STATUS, 'lp_uuid', ARGV[2], 'lp_alias', ARGV[3], 'lp_ts', nowtxt)
touch(nowtxt)
return {'ok'}
"""

# ARGV: MP, attributes JSON
_CREATE = r"""
if exists() then return 0 end
local _, nowtxt = clock()
redis.call('HSET', K_STATUS, 'created', nowtxt, 'modified', nowtxt, 'attrs', ARGV[2])
return 1
"""

# ARGV: MP
_DESTROY = r"""
if not exists() then return 0 end
for _, key in ipairs({K_PENDING, K_FAILED}) do
  local members = redis.call('ZRANGE', key, 0, -1)
  for i = 1, #members do redis.call('DEL', MP .. members[i]) end
end
for i = 1, #KEYS do redis.call('UNLINK', KEYS[i]) end
return 1
"""

# ARGV: MP, "uuid" or "alias", value -> {'ok'} or {'ok', u, rec, ins, att}
_FIND_ONE = r"""
if not exists() then return {'noqueue'} end
local u = ARGV[3]
if ARGV[2] == 'alias' then
  u = redis.call('HGET', K_ALIAS, ARGV[3])
  if not u then return {'ok'} end
end
if not redis.call('ZSCORE', K_PENDING, u) then return {'ok'} end
local f = redis.call('HMGET', MP .. u, 'rec', 'ins', 'att')
return {'ok', u, f[1], f[2], f[3]}
"""

# ARGV: MP, after seq (exclusive), count -> {'ok', u, rec, ins, att, seq, ...} in queue order
_FIND_PAGE = r"""
if not exists() then return {'noqueue'} end
local page = redis.call('ZRANGEBYSCORE', K_PENDING, '(' .. ARGV[2], '+inf', 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {'ok'}
for i = 1, #page, 2 do
  local f = redis.call('HMGET', MP .. page[i], 'rec', 'ins', 'att')
  out[#out + 1] = page[i]
  out[#out + 1] = f[1]
  out[#out + 1] = f[2]
  out[#out + 1] = f[3]
  out[#out + 1] = page[i + 1]
end
return out
"""

# ARGV: MP, uuid, alias ("" none), rec, dis, du
_UPDATE = r"""
if not exists() then return {'noqueue'} end
local u, a = ARGV[2], ARGV[3]
local m = MP .. u
if not redis.call('ZSCORE', K_PENDING, u) then return {'notfound'} end
local now, nowtxt = clock()
if in_flight(u, now) then return {'inflight'} end
if a ~= '' then
  local holder = redis.call('HGET', K_ALIAS, a)
  if holder and holder ~= u then return {'dup', holder} end
end
free_alias(u)
if a ~= '' then
  redis.call('HSET', K_ALIAS, a, u)
  redis.call('HSET', m, 'alias', a)
else
  redis.call('HDEL', m, 'alias')
end
redis.call('HSET', m, 'rec', ARGV[4], 'dis', ARGV[5], 'du', ARGV[6])
redis.call('HDEL', m, 'lease')
unplace(u)
place(u, now)
touch(nowtxt)
return {'ok'}
"""

# ARGV: MP, uuid
_REMOVE = r"""
if not exists() then return {'noqueue'} end
local u = ARGV[2]
if not redis.call('ZSCORE', K_PENDING, u) then return {'notfound'} end
local now, nowtxt = clock()
if in_flight(u, now) then return {'inflight'} end
drop(u)
touch(nowtxt)
return {'ok'}
"""

# ARGV: MP, given uuid ("" none), fallback uuid, alias, rec, dis, du, attempts, errors JSON
_ADD_FAILED = r"""
local now, nowtxt = clock()
local created = ensure_queue(nowtxt)
local u = ARGV[2]
if u == '' or redis.call('EXISTS', MP .. u) == 1 then u = ARGV[3] end
local m = MP .. u
local seq = redis.call('INCR', K_SEQ)
redis.call('HSET', m, 'rec', ARGV[5], 'ins', nowtxt, 'seq', seq, 'att', ARGV[8], 'dis', ARGV[6], 'du', ARGV[7],
  'err', ARGV[9], 'fat', now)
if ARGV[4] ~= '' then redis.call('HSET', m, 'alias', ARGV[4]) end
redis.call('ZADD', K_FAILED, now, u)
touch(nowtxt)
return {'ok', created, u, nowtxt}
"""

# ARGV: MP, since ("-inf" or us), until ("+inf" or us)
#       -> {'ok', u, rec, ins, att, err, fat, seq, ...} unsorted
_FAILED_LIST = r"""
if not exists() then return {'noqueue'} end
local out = {'ok'}
for _, u in ipairs(redis.call('ZRANGEBYSCORE', K_FAILED, ARGV[2], ARGV[3])) do
  local f = redis.call('HMGET', MP .. u, 'rec', 'ins', 'att', 'err', 'fat', 'seq')
  out[#out + 1] = u
  for i = 1, 6 do out[#out + 1] = f[i] end
end
return out
"""

# ARGV: MP, op ("requeue" or "forget"), since, until, filtered ("0"/"1"), uuids...
_FAILED_MOVE = r"""
if not exists() then return {'noqueue'} end
local wanted = nil
if ARGV[5] == '1' then
  wanted = {}
  for i = 6, #ARGV do wanted[ARGV[i]] = true end
end
local picked = {}
for _, u in ipairs(redis.call('ZRANGEBYSCORE', K_FAILED, ARGV[3], ARGV[4])) do
  if wanted == nil or wanted[u] then
    picked[#picked + 1] = {u, tonumber(redis.call('HGET', MP .. u, 'seq'))}
  end
end
table.sort(picked, function(x, y) return x[2] < y[2] end)
local now, nowtxt = clock()
local out = {'ok'}
for _, item in ipairs(picked) do
  local u, seq = item[1], item[2]
  local m = MP .. u
  if ARGV[2] == 'forget' then
    redis.call('DEL', m)
    redis.call('ZREM', K_FAILED, u)
    out[#out + 1] = u
  else
    local a = redis.call('HGET', m, 'alias')
    if not (a and redis.call('HEXISTS', K_ALIAS, a) == 1) then  -- else: alias taken, stays failed
      redis.call('ZREM', K_FAILED, u)
      redis.call('HSET', m, 'att', 0)
      redis.call('HDEL', m, 'err', 'fat', 'nb', 'lease')
      if a then redis.call('HSET', K_ALIAS, a, u) end
      redis.call('ZADD', K_PENDING, seq, u)
      place(u, now)
      out[#out + 1] = u
    end
  end
end
if #out > 1 then touch(nowtxt) end
return out
"""

# ARGV: MP -> {'ok', {u, rec, ins, att, ...} pending in order, {u, rec, ins, att, err, fat, seq, ...} failed}
_EXPORT = r"""
-- ARGV: MP, 'p' (pending) or 'f' (failed), start index, count: one page, so that a big
-- queue never holds the server for long
if not exists() then return {'noqueue'} end
local key, fields = K_PENDING, {'rec', 'ins', 'att'}
if ARGV[2] == 'f' then key, fields = K_FAILED, {'rec', 'ins', 'att', 'err', 'fat', 'seq'} end
local start = tonumber(ARGV[3])
local out = {}
for _, u in ipairs(redis.call('ZRANGE', key, start, start + tonumber(ARGV[4]) - 1)) do
  local f = redis.call('HMGET', MP .. u, unpack(fields))
  out[#out + 1] = u
  for i = 1, #fields do out[#out + 1] = f[i] end
end
return {'ok', out}
"""

# ARGV: MP, n, then per item: kind ("p"/"f"), uuid, alias, rec, dis, du, ins, attempts, errors JSON, failed_at us
_IMPORT = r"""
local n = tonumber(ARGV[2])
local function arg(i, k) return ARGV[2 + (i - 1) * 10 + k] end
local seen, aliases, fresh = {}, {}, {}
for i = 1, n do
  local kind, u, a = arg(i, 1), arg(i, 2), arg(i, 3)
  if not seen[u] and redis.call('EXISTS', MP .. u) == 0 then
    seen[u] = true
    if kind == 'p' and a ~= '' then
      local holder = redis.call('HGET', K_ALIAS, a)
      if holder or aliases[a] then return {'dup', a, holder or ''} end
      aliases[a] = true
    end
    fresh[#fresh + 1] = i
  end
end
local now, nowtxt = clock()
local created = ensure_queue(nowtxt)
for _, i in ipairs(fresh) do
  local kind, u, a = arg(i, 1), arg(i, 2), arg(i, 3)
  local m = MP .. u
  local seq = redis.call('INCR', K_SEQ)
  local ins = arg(i, 7)
  if ins == '' then ins = nowtxt end
  redis.call('HSET', m, 'rec', arg(i, 4), 'ins', ins, 'seq', seq, 'dis', arg(i, 5), 'du', arg(i, 6))
  if a ~= '' then redis.call('HSET', m, 'alias', a) end
  if kind == 'f' then
    redis.call('HSET', m, 'att', arg(i, 8), 'err', arg(i, 9), 'fat', arg(i, 10))
    redis.call('ZADD', K_FAILED, arg(i, 10), u)
  else
    redis.call('HSET', m, 'att', 0)
    if a ~= '' then redis.call('HSET', K_ALIAS, a, u) end
    redis.call('ZADD', K_PENDING, seq, u)
    place(u, now)
  end
end
if #fresh > 0 then touch(nowtxt) end
return {'ok', created, #fresh}
"""

#: name -> full script source (prelude included).
SCRIPTS: dict[str, str] = {
    name: _PRELUDE + body
    for name, body in {
        "add": _ADD,
        "take": _TAKE,
        "settle": _SETTLE,
        "status": _STATUS,
        "set_attrs": _SET_ATTRS,
        "set_meta": _SET_META,
        "last_processed": _LAST_PROCESSED,
        "create": _CREATE,
        "destroy": _DESTROY,
        "find_one": _FIND_ONE,
        "find_page": _FIND_PAGE,
        "update": _UPDATE,
        "remove": _REMOVE,
        "add_failed": _ADD_FAILED,
        "failed_list": _FAILED_LIST,
        "failed_move": _FAILED_MOVE,
        "export": _EXPORT,
        "import": _IMPORT,
    }.items()
}
