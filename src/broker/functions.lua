#!lua name=event_gateway
-- event-gateway's Redis Functions, loaded by every replica at start-up and whenever it finds
-- them missing or different (FUNCTION LOAD REPLACE). The limits below are filled in from the configuration.
--
--   FCALL event_gateway_publish 1 <org> <envelope-json>   -> event id (or 0 keys, the org as
--                                                            the first argument)
--   FCALL_RO event_gateway_page 0 <count> <org> <start> [<org> <start> ...]
--   FCALL_RO event_gateway_version 0                         -> digest of this library
--
-- Event ids are "<ms>-<seq>" from ONE counter per Redis (key events:last-id), so they are
-- totally ordered across all orgs and sort by publish time (in cluster mode: one counter per
-- org, so ids are ordered per org). Each org's history is the stream
-- events:history:<org>, whose entry ids are the event ids. The publish appends to the stream and
-- PUBLISHes "<id> <envelope>" on events:durable:<org> in one atomic step. That channel is the
-- Function's alone (live publishers use events:org:<org>, which never carries ids), so an ACL
-- can keep plain publishers from imitating durable events.

local VERSION = '__VERSION__'
local MAX_EVENTS = __MAX_EVENTS__
local RETENTION_MS = __RETENTION_MS__
local MAX_BYTES = __MAX_BYTES__
-- Cluster mode: every key and channel of an org carries the org as a hash tag ({<org>}), so
-- that they live on the org's node; ids come from one counter per org; durable events go out
-- by SPUBLISH. Standalone mode keeps the untagged names and one counter for all orgs.
local CLUSTER = __CLUSTER__

local function of_org(prefix, org)
  if CLUSTER then
    return prefix .. '{' .. org .. '}'
  end
  return prefix .. org
end

-- The id counter an org's events take their ids from.
local function counter_key(org)
  if CLUSTER then
    return 'events:last-id:{' .. org .. '}'
  end
  return 'events:last-id'
end

local function valid_org(org)
  return type(org) == 'string' and #org >= 1 and #org <= 64 and not string.find(org, '[^A-Za-z0-9_%-]')
end

local function valid_type(t)
  if type(t) ~= 'string' or #t < 1 or #t > 64 then
    return false
  end
  for segment in string.gmatch(t .. '.', '([^.]*)%.') do
    if #segment == 0 or string.find(segment, '[^a-z0-9_%-]') then
      return false
    end
  end
  return true
end

local function optional_string(envelope, name)
  local value = envelope[name]
  return value == nil or type(value) == 'string'
end

-- Returns nil when the envelope is acceptable, else a sentence naming the problem.
local function envelope_problem(org, payload)
  if #payload > MAX_BYTES then
    return 'envelope is ' .. #payload .. ' bytes, over the limit of ' .. MAX_BYTES
  end
  local ok, envelope = pcall(cjson.decode, payload)
  if not ok or type(envelope) ~= 'table' or not string.match(payload, '^%s*{') then
    return 'envelope is not a JSON object'
  end
  if envelope['type'] == nil then
    return 'envelope has no "type"'
  end
  if not valid_type(envelope['type']) then
    return '"type" must be dot-separated segments of a-z, 0-9, _ or -, at most 64 characters'
  end
  local data = envelope['data']
  if data == nil then
    return 'envelope has no "data"'
  end
  if type(data) ~= 'table' or #data > 0 then
    return '"data" must be a JSON object'
  end
  if envelope['orgId'] ~= nil and envelope['orgId'] ~= org then
    return '"orgId" does not match the org argument'
  end
  local priority = envelope['priority']
  if priority ~= nil and priority ~= 'normal' and priority ~= 'high' then
    return '"priority" must be "normal" or "high"'
  end
  for _, name in ipairs({'landlordId', 'tenantId', 'contractorId'}) do
    if not optional_string(envelope, name) then
      return '"' .. name .. '" must be a string'
    end
  end
  local users = envelope['userIds']
  if users ~= nil then
    if type(users) ~= 'table' then
      return '"userIds" must be an array of strings'
    end
    for _, user in pairs(users) do
      if type(user) ~= 'string' then
        return '"userIds" must be an array of strings'
      end
    end
  end
  return nil
end

local function parse_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function next_id(org, stream)
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  local ms, seq = now, 0
  local last = redis.call('HMGET', counter_key(org), 'ms', 'seq', 'epoch')
  if last[1] then
    local last_ms, last_seq = tonumber(last[1]), tonumber(last[2])
    if ms <= last_ms then
      ms, seq = last_ms, last_seq + 1
    end
  end
  -- Never below the stream's own newest entry, even if the counter key was lost.
  local top = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if top[1] then
    local top_ms, top_seq = parse_id(top[1][1])
    if top_ms and (ms < top_ms or (ms == top_ms and seq <= top_seq)) then
      ms, seq = top_ms, top_seq + 1
    end
  end
  redis.call('HSET', counter_key(org), 'ms', string.format('%d', ms), 'seq', string.format('%d', seq))
  -- The epoch: the first id issued since the counter was created. A counter that is missing
  -- means Redis lost what it had (a restart without persistence, a flush) or never had any:
  -- every position before the epoch's first id belongs to a history that is gone. A counter of
  -- an earlier version has no epoch: '0-0', all positions count.
  if not last[1] then
    redis.call('HSET', counter_key(org), 'epoch', string.format('%d-%d', ms, seq))
  elseif not last[3] then
    redis.call('HSET', counter_key(org), 'epoch', '0-0')
  end
  return ms, seq
end

-- The first id of the current epoch, or '0-0' when unknown.
local function epoch_start(org)
  return redis.call('HGET', counter_key(org), 'epoch') or '0-0'
end

-- Trims the org's history by count and age, remembering the newest id it removed in
-- events:trimmed:<org>, so a replay can tell a client that it missed trimmed events.
local function trim(org, stream, now_ms)
  local newest_removed = nil
  local excess = redis.call('XLEN', stream) - MAX_EVENTS
  if excess > 0 then
    local removed = redis.call('XRANGE', stream, '-', '+', 'COUNT', excess)
    newest_removed = removed[#removed][1]
    redis.call('XTRIM', stream, 'MAXLEN', MAX_EVENTS)
  end
  -- Only when the oldest entry is too old (an O(1) look): a reverse range from an old id
  -- costs time in proportion to the history length.
  local min_ms = now_ms - RETENTION_MS
  local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if oldest[1] and tonumber(string.match(oldest[1][1], '^(%d+)')) < min_ms then
    local min_id = string.format('%d', min_ms)
    local aged = redis.call('XREVRANGE', stream, '(' .. min_id, '-', 'COUNT', 1)
    newest_removed = aged[1][1]
    redis.call('XTRIM', stream, 'MINID', min_id)
  end
  if newest_removed then
    redis.call('SET', of_org('events:trimmed:', org), newest_removed, 'PX', RETENTION_MS)
  end
end

-- FCALL event_gateway_publish 1 <org> <envelope>  (the org as the key: cluster clients route
-- the call to the org's node) or, the original form, FCALL event_gateway_publish 0 <org> <envelope>.
local function publish(keys, args)
  local org, payload = args[1], args[2]
  if #keys == 1 then
    org, payload = keys[1], args[1]
  elseif #keys > 1 then
    return redis.error_reply('ERR event_gateway_publish takes 1 key (the org) or 0 keys')
  end
  if not valid_org(org) then
    return redis.error_reply('ERR invalid org id: must be 1 to 64 characters of A-Z, a-z, 0-9, _ or -')
  end
  if payload == nil then
    return redis.error_reply('ERR missing envelope argument')
  end
  local problem = envelope_problem(org, payload)
  if problem then
    return redis.error_reply('ERR invalid envelope: ' .. problem)
  end
  local stream = of_org('events:history:', org)
  local ms, seq = next_id(org, stream)
  local id = string.format('%d-%d', ms, seq)
  redis.call('XADD', stream, id, 'e', payload)
  trim(org, stream, ms)
  redis.call('PEXPIRE', stream, RETENTION_MS)
  if CLUSTER then
    redis.call('SPUBLISH', of_org('events:durable:', org), id .. ' ' .. payload)
  else
    redis.call('PUBLISH', of_org('events:durable:', org), id .. ' ' .. payload)
  end
  return id
end

-- The newest id ever issued to the org, or '0-0': an id above it was never issued there.
local function last_issued(org)
  local last = redis.call('HMGET', counter_key(org), 'ms', 'seq')
  if last[1] then
    return last[1] .. '-' .. last[2]
  end
  return '0-0'
end

-- One page of several orgs' history, each org read from its own start, at most <count> entries
-- per org (the caller keeps count x orgs small, so every call does bounded work):
--   FCALL_RO event_gateway_page 0 <count> <org> <start> [<org> <start> ...]
--   (in cluster mode one org per call: FCALL_RO event_gateway_page 1 <org> <count> <org> <start>)
-- -> { {org, newest trimmed id or '0-0', oldest kept id or '', { {id, {'e', envelope}}, ... },
--       newest id issued to the org, first id of the org's current epoch or '0-0'}, ... }
-- <start> is an XRANGE start: '(<id>' for after an id, '<ms>-0' for from a time.
local function page(keys, args)
  local count = args[1]
  local out = {}
  for i = 2, #args - 1, 2 do
    local org, start = args[i], args[i + 1]
    local stream = of_org('events:history:', org)
    local deleted = redis.call('GET', of_org('events:trimmed:', org)) or '0-0'
    local oldest, entries = '', {}
    local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
    if first[1] then
      oldest = first[1][1]
      entries = redis.call('XRANGE', stream, start, '+', 'COUNT', count)
    end
    out[#out + 1] = {org, deleted, oldest, entries, last_issued(org), epoch_start(org)}
  end
  return out
end

-- Connection registry, per user: the hash events:conns:{<sub>} holds, for every replica with
-- streams of that user, <replica-id> -> its stream count and <replica-id>:t -> when that count
-- expires (ms) unless the replica's heartbeat renews it. Tagged by user, so admission is one
-- call on one node of a cluster, whatever the number of replicas.
--
-- FCALL event_gateway_conn_open 1 <conns key> <replica-id> <max> <ttl-ms>: counts the user's
-- live streams; takes one more for this replica unless that would exceed max. Returns the new
-- count, or -1 when the user is at the limit. Expired replicas' entries are removed.
local function conn_open(keys, args)
  local key, me, max, ttl = keys[1], args[1], tonumber(args[2]), tonumber(args[3])
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  local fields = redis.call('HGETALL', key)
  local counts, expiries = {}, {}
  for i = 1, #fields, 2 do
    local name, value = fields[i], tonumber(fields[i + 1]) or 0
    if string.sub(name, -2) == ':t' then
      expiries[string.sub(name, 1, -3)] = value
    else
      counts[name] = value
    end
  end
  local total = 0
  for replica, count in pairs(counts) do
    if replica == me or (expiries[replica] or 0) >= now then
      total = total + math.max(count, 0)
    else
      redis.call('HDEL', key, replica, replica .. ':t')
    end
  end
  if total >= max then
    return -1
  end
  redis.call('HINCRBY', key, me, 1)
  redis.call('HSET', key, me .. ':t', string.format('%d', now + ttl))
  redis.call('PEXPIRE', key, ttl)
  return total + 1
end

-- FCALL_RO event_gateway_version 0 -> a digest of this library's text (limits included), so a
-- replica can tell whether the loaded library is the one it would load.
local function version()
  return VERSION
end

redis.register_function('event_gateway_publish', publish)
redis.register_function{function_name = 'event_gateway_version', callback = version, flags = {'no-writes'}}
redis.register_function('event_gateway_conn_open', conn_open)
redis.register_function{function_name = 'event_gateway_page', callback = page, flags = {'no-writes'}}
