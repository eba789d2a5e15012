"""The two Lua scripts of the Redis backend: admit (check and reserve) and settle.

Both run atomically inside Redis, so no two gateway processes can interleave a read and a write.
Times are integer microseconds from Redis' own clock (TIME), so hosts with skewed clocks agree.
Window entries are sorted-set members "<request id>:<cost>" scored by their time; a second key
holds the running total so a check does not have to add up the whole window.
Numbers go back to Redis through string.format('%d') because Lua would print 1e12 as "1e+12".
"""

from __future__ import annotations

# KEYS: per rate check: window zset, total; per budget check: ledger, alert flag.
# ARGV: id, n_rates, n_budgets, per rate: limit, window_us, cost; per budget: limit, amount,
#       expires_at (unix s), alert threshold (-1: none).
# Returns: allowed, now_us, denied index (1-based, rates then budgets; 0 none),
#          per rate: used, reset_us, retry_us; per budget: spent, alert (1 if this request crossed it).
ADMIT = r"""
local id = ARGV[1]
local nr = tonumber(ARGV[2])
local nb = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function fmt(n) return string.format('%d', n) end
local function cost_of(member) return tonumber(string.match(member, ':(%-?%d+)$')) end
local out = {0, now, 0}
local denied = 0
for i = 1, nr do
  local z, s = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 3 + (i - 1) * 3
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
local rate_args = 3 + nr * 3
local budget_out = 3 + nr * 3
for j = 1, nb do
  local a = rate_args + (j - 1) * 4
  local spent = tonumber(redis.call('GET', KEYS[2 * nr + 2 * j - 1]) or '0')
  if spent + tonumber(ARGV[a + 2]) > tonumber(ARGV[a + 1]) and denied == 0 then denied = nr + j end
  out[#out + 1] = spent
  out[#out + 1] = 0
end
if denied > 0 then
  out[3] = denied
  for i = 1, nr do
    local newest = redis.call('ZRANGE', KEYS[2 * i - 1], -1, -1, 'WITHSCORES')
    if #newest > 0 then
      out[3 + (i - 1) * 3 + 2] = tonumber(newest[2]) + tonumber(ARGV[3 + (i - 1) * 3 + 2]) - now
    end
  end
  return out
end
for i = 1, nr do
  local z, s = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 3 + (i - 1) * 3
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
  local ledger, flag = KEYS[2 * nr + 2 * j - 1], KEYS[2 * nr + 2 * j]
  local spent = redis.call('INCRBY', ledger, ARGV[a + 2])
  redis.call('EXPIREAT', ledger, ARGV[a + 3])
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

# KEYS: per token correction: window zset, total; per budget: ledger; then the report hash if any.
# ARGV: id, at_us, n_rates, n_budgets, has_report, per rate: window_us, delta; per budget: delta;
#       report: expires_at, model, key id, cost.
SETTLE = r"""
local id = ARGV[1]
local at = tonumber(ARGV[2])
local nr = tonumber(ARGV[3])
local nb = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, nr do
  local a = 5 + (i - 1) * 2
  -- Filed at the admission time, so the correction leaves the window together with the entry;
  -- once that entry has left, there is nothing to correct.
  if at > now - tonumber(ARGV[a + 1]) then
    redis.call('ZADD', KEYS[2 * i - 1], ARGV[2], id .. '~:' .. ARGV[a + 2])
    redis.call('INCRBY', KEYS[2 * i], ARGV[a + 2])
  end
end
local b = 5 + nr * 2
for j = 1, nb do
  redis.call('INCRBY', KEYS[2 * nr + j], ARGV[b + j])
end
if ARGV[5] == '1' then
  local r = KEYS[2 * nr + nb + 1]
  local a = b + nb
  local cost = ARGV[a + 4]
  redis.call('HINCRBY', r, 'm:' .. ARGV[a + 2], cost)
  redis.call('HINCRBY', r, 'r:' .. ARGV[a + 2], 1)
  redis.call('HINCRBY', r, 'k:' .. ARGV[a + 3], cost)
  redis.call('EXPIREAT', r, ARGV[a + 1])
end
return 1
"""
