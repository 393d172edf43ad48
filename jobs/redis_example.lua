-- Redis in and out: sensor readings arrive as JSON entries of the stream
-- "readings" (field `value`), read in the consumer group "ember-redis_example";
-- the latest PM2.5 of each device goes to the hash "last:<device>", and a
-- per-batch count of readings goes to "readings:count" through a pooled
-- connection borrowed with ember.redis(). An entry is acknowledged (XACK)
-- only once both outputs succeeded: a crash at any point loses nothing.
--
-- Set EMBER_REDIS_URL (redis://[:password@]host:port[/db]) to run it; feed it
-- with, for example:
--   redis-cli XADD readings '*' value '{"device":"sensor-07","pm25":140.5}'
-- and look at the result with `redis-cli HGETALL last:sensor-07`.
local ember = require "ember"
local cjson = require "cjson.safe"

local url = os.getenv("EMBER_REDIS_URL")
if not url or url == "" then
  return ember.disabled("set EMBER_REDIS_URL to run this job")
end

local job = ember.job { name = "redis_example", batch_interval = "1s" }

local readings = job:redis { url = url, mode = "stream", key = "readings", max_rate = 5000 }
  :map(cjson.decode) -- nil for broken JSON: the element is dropped (and its entry acked)
  :filter(function(r)
    return type(r) == "table" and type(r.device) == "string" and type(r.pm25) == "number"
  end)

readings:to_redis {
  url = url,
  command = function(r) return "HSET", "last:" .. r.device, "pm25", r.pm25 end,
}

readings:foreach_batch(function(batch)
  if #batch == 0 then return end
  local redis = assert(ember.redis(url))
  assert(redis:call("INCRBY", "readings:count", #batch))
end)

return job
