"""The Redis broker's Lua scripts; each runs atomically inside Redis.

Keys of one room (``P`` the prefix, ``R`` the room; ``{R}`` is a Redis Cluster
hash tag, so a room's keys share one hash slot)::

    P:room:{R}:epoch    string  random hex, new whenever the room's data is (re)created
    P:room:{R}:seq      string  last seq given out
    P:room:{R}:stream   stream  last history_size messages; entry id ``<seq>-0``, field ``payload``
    P:room:{R}:cids     zset    dedupe window: ``<sender>\\n<cid>`` scored by its seq
    P:room:{R}:members  hash    per replica: ``<count>:<lease deadline ms>`` (absent when empty)
    P:room:{R}          channel ``m<first seq> <epoch> <payload>[\\n<payload>...]`` (messages with
                                consecutive seqs), ``p<payload>`` (presence)

A payload is compact JSON (orjson escapes every control character), so it
never holds a newline: one pub/sub message carries a room's whole batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()


# Publish a batch of messages to one or more rooms (all on this Redis), atomically.
# KEYS, 4 per room: epoch, seq, stream, cids.
# ARGV: 1 ttl ms, 2 history_size, 3 dedupe window (seqs; 0: none), then per room:
#   candidate epoch (Python draws it: Lua's random is deterministic), channel, n,
#   then n x (head, middle, tail, dedupe key or ''): the JSON around seq/id/ts, pre-encoded
#   by orjson, so a payload is byte-for-byte protocol.encode_message.
# Returns one entry per message in argument order: its new seq, or for a duplicate
# {original seq, original payload}.
#
# Redis spends most of a script's time per redis.call, so the message path makes
# few: per message XADD (and ZADD NX with a dedupe key: one call both tests and
# records it); per room MGET, SET and PUBLISH. The dedupe window is trimmed, and
# the keys' expiry renewed, once per 64 seqs (and by each subscribed replica's
# renewal loop), so the zset holds at most window + 64 members; a member older
# than the window is treated as absent. XADD comes before the seq is written: Redis
# does not roll a failed script back, and a failed XADD must not leave a seq
# without its message.
PUBLISH = Script("publish", """
local ttl, cap, window = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local ts = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
local out = {}
local a = 4
for r = 0, #KEYS / 4 - 1 do
  local kepoch, kseq, kstream, kcids = KEYS[4 * r + 1], KEYS[4 * r + 2], KEYS[4 * r + 3], KEYS[4 * r + 4]
  local state = redis.call('MGET', kepoch, kseq)
  local epoch, seq = state[1], state[2]
  local fresh = not epoch or not seq
  if fresh then
    epoch, seq = ARGV[a], 0
    redis.call('SET', kepoch, epoch, 'PX', ttl)
    redis.call('DEL', kstream, kcids)
  else
    seq = tonumber(seq)
  end
  local channel, n = ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 3
  local first, frames = seq + 1, {}
  for i = 1, n do
    local dedupe = ARGV[a + 3]
    local original = false
    if dedupe ~= '' and redis.call('ZADD', kcids, 'NX', seq + 1, dedupe) == 0 then
      original = tonumber(redis.call('ZSCORE', kcids, dedupe))
      if original <= seq - window then  -- out of the window: a new message after all
        redis.call('ZADD', kcids, seq + 1, dedupe)
        original = false
      end
    end
    if original then
      local entry = redis.call('XRANGE', kstream, original .. '-0', original .. '-0')
      out[#out + 1] = {original, entry[1] and entry[1][2][2] or ''}
    else
      seq = seq + 1
      local payload = ARGV[a] .. seq .. ',"id":"' .. epoch .. '-' .. seq .. '"' .. ARGV[a + 1]
        .. ',"ts":' .. ts .. ARGV[a + 2]
      redis.call('XADD', kstream, 'MAXLEN', cap, seq .. '-0', 'payload', payload)
      frames[#frames + 1] = payload
      out[#out + 1] = seq
    end
    a = a + 4
  end
  if #frames > 0 then
    redis.call('SET', kseq, seq, 'PX', ttl)
    if fresh or math.floor(seq / 64) ~= math.floor((first - 1) / 64) then
      if window > 0 then redis.call('ZREMRANGEBYSCORE', kcids, '-inf', seq - window) end
      redis.call('PEXPIRE', kepoch, ttl)
      redis.call('PEXPIRE', kstream, ttl)
      redis.call('PEXPIRE', kcids, ttl)
    end
    redis.call('PUBLISH', channel, 'm' .. first .. ' ' .. epoch .. ' ' .. table.concat(frames, '\\n'))
  end
end
return out
""")

# Shared head of the scripts below that create data: a room without an epoch or a
# seq (new, expired, evicted, or Redis lost its data) starts a new epoch at seq 0.
# KEYS: epoch, seq, stream, cids[, members]. ARGV[1]: candidate epoch.
_ENSURE_ROOM = """
local epoch = redis.call('GET', KEYS[1])
if not epoch or redis.call('EXISTS', KEYS[2]) == 0 then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('SET', KEYS[2], 0)
  redis.call('DEL', KEYS[3], KEYS[4])
end
"""

# epoch, last seq and only the entries needed, read atomically.
# KEYS: epoch, seq, stream, cids, members. ARGV: 2 ttl ms, 3 since ('' none),
# 4 since's epoch ('' any), 5 limit.
# Returns {epoch, last, entries[, 1 when entries are newest first]}.
HISTORY = Script("history", _ENSURE_ROOM + """
for i = 1, 5 do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
local last = tonumber(redis.call('GET', KEYS[2]))
local since = tonumber(ARGV[3])
if since and (ARGV[4] == '' or ARGV[4] == epoch) and since <= last then
  return {epoch, last, redis.call('XRANGE', KEYS[3], (since + 1) .. '-0', '+')}
end
local limit = tonumber(ARGV[5])
if limit <= 0 then return {epoch, last, {}} end
return {epoch, last, redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', limit), 1}
""")

# What a replica that delivered up to (ARGV[1] epoch, ARGV[2] seq) missed.
# KEYS: epoch, seq, stream. Another epoch means everything of the current one.
# Read only; creates nothing.
CATCH_UP = Script("catch_up", """
local epoch = redis.call('GET', KEYS[1])
if not epoch then return {'', 0, {}} end
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local after = 0
if epoch == ARGV[1] then after = tonumber(ARGV[2]) end
if after >= last then return {epoch, last, {}} end
return {epoch, last, redis.call('XRANGE', KEYS[3], (after + 1) .. '-0', '+')}
""")

# Sets this replica's member count (ARGV[1], field ARGV[3]) on a lease of ARGV[4] ms and
# returns the sum over the replicas whose lease holds; expired leases are removed.
# KEYS: members. ARGV[2]: the room's expiry (ms). The hash disappears when empty.
PRESENCE = Script("presence", """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mine = tonumber(ARGV[1])
if mine > 0 then
  redis.call('HSET', KEYS[1], ARGV[3], mine .. ':' .. (now + tonumber(ARGV[4])))
else
  redis.call('HDEL', KEYS[1], ARGV[3])
end
local total = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local n, deadline = string.match(all[i + 1], '^(%d+):(%d+)$')
  if n and tonumber(deadline) >= now then
    total = total + tonumber(n)
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
if total > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return total
""")

ALL = (PUBLISH, HISTORY, CATCH_UP, PRESENCE)
