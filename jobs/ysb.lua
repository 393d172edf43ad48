-- The Yahoo Streaming Benchmark (yahoo/streaming-benchmarks) as an ember job,
-- with the built-in operators: ad events arrive as JSON on the Kafka topic
-- "ad-events"; the views are kept, each ad is joined to its campaign (a
-- reference table loaded from Redis), and the views are counted per
-- campaign in 10 s event-time windows, written to Redis in the benchmark's
-- layout:
--
--   HSET <campaign> <window start ms> <window id>  windows windows:<campaign>
--   SADD windows:<campaign> <window start ms>
--   HSET <window id> seen_count <views> time_updated <wall clock ms>
--
-- The window id is <campaign>:<window start> (the benchmark draws a UUID):
-- a batch run again after a crash rewrites the same keys, and seen_count is
-- the window's count from the job's checkpointed state (not a per-batch
-- increment), so every count is exact across kill -9. The benchmark's
-- window list is a set here for the same reason. Each batch writes the
-- windows its records changed (emit = "update"), so time_updated minus the
-- window's end is the benchmark's latency.
--
-- Set EMBER_KAFKA_BROKERS (host:port,...) and EMBER_YSB_REDIS (a redis://
-- URL) to run it. Redis must hold the ad -> campaign table as the hash
-- "ad_campaign" (bench/ysb/gen.lua writes it, with the benchmark's own
-- SET <ad> <campaign> keys and the "campaigns" set). Optional:
-- EMBER_YSB_TOPIC (ad-events), EMBER_YSB_GROUP (ysb), EMBER_YSB_BATCH
-- (batch interval, 1s), EMBER_YSB_DELAY (watermark delay, 1s),
-- EMBER_YSB_LATENESS (allowed lateness, 10s), EMBER_YSB_FETCH_WAIT_MS
-- (librdkafka's fetch.wait.max.ms; librdkafka's default when unset).
local ember = require "ember"
local ffi = require "ffi"

local tonumber = tonumber
local os_getenv = os.getenv

local function env(name, default)
  local v = os_getenv(name)
  if v == nil or v == "" then
    return default
  end
  return v
end

local brokers, redis_url = env("EMBER_KAFKA_BROKERS"), env("EMBER_YSB_REDIS")
if not brokers or not redis_url then
  return ember.disabled("set EMBER_KAFKA_BROKERS and EMBER_YSB_REDIS to run this job")
end

-- The wall clock in ms, for time_updated.
pcall(ffi.cdef, [[
  typedef struct { long tv_sec; long tv_nsec; } ysb_timespec;
  int clock_gettime(int clk, ysb_timespec *ts);
]])
local ts = ffi.new("ysb_timespec")
local function now_ms()
  ffi.C.clock_gettime(0, ts)                    -- CLOCK_REALTIME
  return tonumber(ts.tv_sec) * 1000 + math.floor(tonumber(ts.tv_nsec) / 1e6)
end

local job = ember.job { name = "ysb", batch_interval = env("EMBER_YSB_BATCH", "1s") }

-- ad_id -> campaign_id, read from Redis before the first batch and again
-- every 10 s.
local ads = job:table { from = { redis = redis_url, hash = "ad_campaign" }, refresh = "10s" }

local source = { brokers = brokers, topic = env("EMBER_YSB_TOPIC", "ad-events"),
                 group = env("EMBER_YSB_GROUP", "ysb"), start = "earliest", format = "json",
                 -- the three fields the job reads; the other four are not decoded
                 fields = { "event_type", "event_time", "ad_id" },
                 ["kafka.fetch.wait.max.ms"] = env("EMBER_YSB_FETCH_WAIT_MS") }

local windows = job:kafka(source)
  :filter(function(e) return e.event_type == "view" end)
  :event_time(function(e) return tonumber(e.event_time) end)
  :with_watermark(tonumber(env("EMBER_YSB_DELAY", "1s")) or env("EMBER_YSB_DELAY", "1s"))
  :map(function(e) return e.ad_id, 1 end)
  :join(ads)                                    -- (ad_id, { 1, campaign_id })
  :map(function(_, p) return p[2], 1 end)
  :event_window { size = "10s", emit = "update", name = "campaign_windows",
                  allowed_lateness = env("EMBER_YSB_LATENESS", "10s") }
  :count()

-- Three idempotent commands per changed window, pipelined by the sink.
windows
  :flat_map(function(campaign, w)
    local start = w.start
    local id = campaign .. ":" .. start
    local list = "windows:" .. campaign
    return {
      { "HSET", campaign, start, id, "windows", list },
      { "SADD", list, start },
      { "HSET", id, "seen_count", w.value, "time_updated", now_ms() },
    }
  end)
  :to_redis { url = redis_url, command = function(c) return c end }

return job
