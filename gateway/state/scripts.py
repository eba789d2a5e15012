"""The Lua scripts of the Redis backend: admit (check and reserve), settle, renew and ledger.

Each runs atomically inside Redis, so no two gateway processes can interleave a read and a write.
Times are integer microseconds from Redis' own clock (TIME), so hosts with skewed clocks agree.
Window entries are sorted-set members "<request id>:<cost>" scored by their time; a second key
holds the running total so a check does not have to add up the whole window.
Numbers go back to Redis through string.format('%d') because Lua would print 1e12 as "1e+12".
A budget's open reservations are a sorted set beside its ledger: members "<ticket id>:<amount>"
scored by the end of their lease. Any script that reads a ledger first releases the lapsed ones.
"""

from __future__ import annotations

# The sweep shared by admit and ledger: release up to 256 lapsed reservations of one ledger.
_SWEEP = r"""
local function sweep(ledger, res, now)
  local lapsed = redis.call('ZRANGEBYSCORE', res, '-inf', now, 'LIMIT', 0, 256)
  if #lapsed == 0 then return tonumber(redis.call('GET', ledger) or '0') end
  local freed = 0
  for _, m in ipairs(lapsed) do
    freed = freed + tonumber(string.match(m, ':(%-?%d+)$'))
    redis.call('ZREM', res, m)
  end
  return redis.call('DECRBY', ledger, string.format('%d', freed))
end
"""

# KEYS: per rate check: window zset, total; per budget check: ledger, alert flag, reservations.
# ARGV: id, n_rates, n_budgets, lease_us, per rate: limit, window_us, cost; per budget: limit, amount,
#       expires_at (unix s), alert threshold (-1: none).
# Returns: allowed, now_us, denied index (1-based, rates then budgets; 0 none),
#          per rate: used, reset_us, retry_us; per budget: spent, alert (1 if this request crossed it).
ADMIT = (
    _SWEEP
    + r"""
local id = ARGV[1]
local nr = tonumber(ARGV[2])
local nb = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function fmt(n) return string.format('%d', n) end
local function cost_of(member) return tonumber(string.match(member, ':(%-?%d+)$')) end
local out = {0, now, 0}
local denied = 0
for i = 1, nr do
  local z, s = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 4 + (i - 1) * 3
  local limit, window, cost = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local horizon = fmt(now - window)
  local total = tonumber(redis.call('GET', s) or '0')
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', horizon)
  if #old > 0 then
    local freed = 0
    for _, m in ipairs(old) do freed = freed + cost_of(m) end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', horizon)
    total = total - freed
    if redis.call('ZCARD', z) == 0 then
      total = 0
      redis.call('DEL', s)
    else
      redis.call('SET', s, fmt(total), 'KEEPTTL')
    end
  end
  local retry = 0
  if total + cost > limit then
    local need = total + cost - limit
    retry = window
    local head = redis.call('ZRANGE', z, 0, 63, 'WITHSCORES')
    local freed = 0
    for j = 1, #head, 2 do
      freed = freed + cost_of(head[j])
      if freed >= need then
        retry = tonumber(head[j + 1]) + window - now
        break
      end
    end
    if denied == 0 then denied = i end
  end
  out[#out + 1] = total
  out[#out + 1] = 0  -- the reset: filled in below, it depends on whether the request is admitted
  out[#out + 1] = retry
end
local rate_args = 4 + nr * 3
local budget_out = 3 + nr * 3
for j = 1, nb do
  local a = rate_args + (j - 1) * 4
  local k = 2 * nr + 3 * (j - 1)
  local spent = sweep(KEYS[k + 1], KEYS[k + 3], fmt(now))
  if spent + tonumber(ARGV[a + 2]) > tonumber(ARGV[a + 1]) and denied == 0 then denied = nr + j end
  out[#out + 1] = spent
  out[#out + 1] = 0
end
if denied > 0 then
  out[3] = denied
  for i = 1, nr do
    local newest = redis.call('ZRANGE', KEYS[2 * i - 1], -1, -1, 'WITHSCORES')
    if #newest > 0 then
      out[3 + (i - 1) * 3 + 2] = tonumber(newest[2]) + tonumber(ARGV[4 + (i - 1) * 3 + 2]) - now
    end
  end
  return out
end
for i = 1, nr do
  local z, s = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 4 + (i - 1) * 3
  local window = tonumber(ARGV[a + 2])
  redis.call('ZADD', z, fmt(now), id .. ':' .. ARGV[a + 3])
  local total = redis.call('INCRBY', s, ARGV[a + 3])
  local ttl = math.ceil(window / 1000000) + 1
  redis.call('EXPIRE', z, ttl)
  redis.call('EXPIRE', s, ttl)
  out[3 + (i - 1) * 3 + 1] = total
  out[3 + (i - 1) * 3 + 2] = window
end
for j = 1, nb do
  local a = rate_args + (j - 1) * 4
  local k = 2 * nr + 3 * (j - 1)
  local ledger, flag, res = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local spent = redis.call('INCRBY', ledger, ARGV[a + 2])
  redis.call('EXPIREAT', ledger, ARGV[a + 3])
  redis.call('ZADD', res, fmt(now + lease), id .. ':' .. ARGV[a + 2])
  redis.call('EXPIREAT', res, ARGV[a + 3])
  local o = budget_out + (j - 1) * 2
  out[o + 1] = spent
  local alert = tonumber(ARGV[a + 4])
  if alert >= 0 and spent >= alert then
    if redis.call('SET', flag, '1', 'NX', 'EXAT', ARGV[a + 3]) then out[o + 2] = 1 end
  end
end
out[1] = 1
return out
"""
)

# KEYS: the tenant's settled ids, per token correction: window zset, total; per budget: ledger,
#       reservations; per report line: its day's report hash.
# ARGV: id, at_us, n_rates, n_budgets, n_lines, cost, sent_us (the sender's clock), keep_us,
#       late_us, late_keep_us, per rate: window_us, delta; per budget: reserved amount;
#       per report line: expires_at, model, key id, cost, requests.
# Settled ids are scored by when they may be forgotten.
# Returns 1 when applied, 0 when this id was settled before (nothing changed).
SETTLE = r"""
local id = ARGV[1]
local at = tonumber(ARGV[2])
local nr = tonumber(ARGV[3])
local nb = tonumber(ARGV[4])
local cost = tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function fmt(n) return string.format('%d', n) end
if redis.call('ZSCORE', KEYS[1], id) then return 0 end
local keep = tonumber(ARGV[8])
if now - tonumber(ARGV[7]) > tonumber(ARGV[9]) then keep = tonumber(ARGV[10]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now))
redis.call('ZADD', KEYS[1], fmt(now + keep), id)
if redis.call('PTTL', KEYS[1]) < keep / 1000 then redis.call('PEXPIRE', KEYS[1], fmt(keep / 1000)) end
for i = 1, nr do
  local a = 10 + (i - 1) * 2
  -- Filed at the admission time, so the correction leaves the window together with the entry;
  -- once that entry has left, there is nothing to correct.
  if at > now - tonumber(ARGV[a + 1]) then
    redis.call('ZADD', KEYS[2 * i], ARGV[2], id .. '~:' .. ARGV[a + 2])
    redis.call('INCRBY', KEYS[2 * i + 1], ARGV[a + 2])
  end
end
local b = 10 + nr * 2
for j = 1, nb do
  local ledger, res = KEYS[1 + 2 * nr + 2 * j - 1], KEYS[1 + 2 * nr + 2 * j]
  local amount = ARGV[b + j]
  -- Still reserved: replace the reservation by the cost. Released (its lease ran out) or never
  -- reserved (admitted while Redis was down): the whole cost is new spend.
  local delta = cost
  if redis.call('ZREM', res, id .. ':' .. amount) == 1 then delta = cost - tonumber(amount) end
  if delta ~= 0 then redis.call('INCRBY', ledger, fmt(delta)) end
end
for k = 1, tonumber(ARGV[5]) do
  local r = KEYS[1 + 2 * nr + 2 * nb + k]
  local a = b + nb + (k - 1) * 5
  redis.call('HINCRBY', r, 'm:' .. ARGV[a + 2], ARGV[a + 4])
  redis.call('HINCRBY', r, 'r:' .. ARGV[a + 2], ARGV[a + 5])
  redis.call('HINCRBY', r, 'k:' .. ARGV[a + 3], ARGV[a + 4])
  redis.call('EXPIREAT', r, ARGV[a + 1])
end
return 1
"""

# KEYS: reservation sets; ARGV: lease_us, then the member to renew in each set.
RENEW = r"""
local t = redis.call('TIME')
local until_us = string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[1]))
for i = 1, #KEYS do redis.call('ZADD', KEYS[i], 'XX', until_us, ARGV[i + 1]) end
return 1
"""

# KEYS: ledger, reservations. Returns the ledger after releasing its lapsed reservations.
LEDGER = (
    _SWEEP
    + r"""
local t = redis.call('TIME')
return sweep(KEYS[1], KEYS[2], string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2])))
"""
)
