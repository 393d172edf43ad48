-- The YSB job written by hand, for bench/ysb/run.sh to compare with
-- jobs/ysb.lua in the same run: the same input, the same output layout,
-- but the way it had to be written before event-time windows and tables:
-- the ad -> campaign table cached in an upvalue (read once, on the first
-- record), the window key computed by hand, per-batch counts merged into
-- Redis with HINCRBY (pipelined: ember.redis's pipeline). Processing-time
-- batches, no watermark, no state: a batch run again after a crash counts
-- twice. Same environment variables as jobs/ysb.lua.
local ember = require "ember"
local ffi = require "ffi"

local tonumber = tonumber

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then
    return default
  end
  return v
end

local brokers, redis_url = env("EMBER_KAFKA_BROKERS"), env("EMBER_YSB_REDIS")
if not brokers or not redis_url then
  return ember.disabled("set EMBER_KAFKA_BROKERS and EMBER_YSB_REDIS to run this job")
end

pcall(ffi.cdef, [[
  typedef struct { long tv_sec; long tv_nsec; } ysb_timespec;
  int clock_gettime(int clk, ysb_timespec *ts);
]])
local ts = ffi.new("ysb_timespec")
local function now_ms()
  ffi.C.clock_gettime(0, ts)
  return tonumber(ts.tv_sec) * 1000 + math.floor(tonumber(ts.tv_nsec) / 1e6)
end

local campaign_of                       -- ad_id -> campaign_id, read once
local function load_campaigns()
  local r = assert(ember.redis(redis_url))
  local all = assert(r:call("HGETALL", "ad_campaign"))
  campaign_of = {}
  for i = 1, #all, 2 do campaign_of[all[i]] = all[i + 1] end
end

local job = ember.job { name = env("EMBER_YSB_NAME", "ysb_handwritten"),
                        batch_interval = env("EMBER_YSB_BATCH", "1s") }

job:kafka { brokers = brokers, topic = env("EMBER_YSB_TOPIC", "ad-events"),
            group = env("EMBER_YSB_GROUP", "ysb_handwritten"), start = "earliest",
            format = "json", fields = { "event_type", "event_time", "ad_id" },
            ["kafka.fetch.wait.max.ms"] = env("EMBER_YSB_FETCH_WAIT_MS") }
  :filter(function(e) return e.event_type == "view" end)
  :map(function(e)
    if not campaign_of then load_campaigns() end
    local t = tonumber(e.event_time)
    return campaign_of[e.ad_id] .. " " .. (t - t % 10000), 1
  end)
  :reduce_by_key(function(a, b) return a + b end)
  :foreach_batch(function(counts)
    if #counts == 0 then return end
    local r = assert(ember.redis(redis_url))
    local p = r:pipeline()
    local now = now_ms()
    for i = 1, #counts do
      local c, start = counts[i][1]:match("^(%S+) (%d+)$")
      local id = c .. ":" .. start
      local list = "windows:" .. c
      p:call("HSET", c, start, id, "windows", list)
      p:call("SADD", list, start)
      p:call("HINCRBY", id, "seen_count", counts[i][2])
      p:call("HSET", id, "time_updated", now)
    end
    local replies, err = p:exec()
    assert(replies and not err, err)
  end)

return job
