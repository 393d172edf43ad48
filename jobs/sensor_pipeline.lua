-- The pipeline ember was built for: air-quality sensors publish readings as
-- JSON to the Kafka topic "datapoints". This job drops the malformed ones,
-- keeps each device's latest reading in Redis (hash "sensor:<device>"), and
-- publishes an alert to RabbitMQ (the built-in topic exchange "amq.topic",
-- routing key "pm25.<device>": bind a queue with "pm25.#" to get them) for
-- readings above the threshold. Offsets are committed
-- only after Redis replied and RabbitMQ confirmed, so a crash at any moment
-- loses nothing (at-least-once; the Redis write is idempotent).
--
-- Runs when EMBER_KAFKA_BROKERS, EMBER_REDIS_URL and EMBER_RABBITMQ_URL are
-- set (docker/docker-compose.yml sets them).
local ember = require "ember"
local cjson = require "cjson.safe"

local PM25_ALERT = tonumber(os.getenv("EMBER_PM25_ALERT")) or 100 -- µg/m³

local brokers = os.getenv("EMBER_KAFKA_BROKERS")
local redis_url = os.getenv("EMBER_REDIS_URL")
local rabbitmq_url = os.getenv("EMBER_RABBITMQ_URL")
if not (brokers and redis_url and rabbitmq_url) then
  return ember.disabled("set EMBER_KAFKA_BROKERS, EMBER_REDIS_URL and EMBER_RABBITMQ_URL to run it")
end

-- A reading every output can write. One they could not would be skipped
-- and counted as failed (on_error); dropping it here keeps the counts for
-- real faults.
local function optional(v)
  return v == nil or type(v) == "number" or type(v) == "string"
end

local function well_formed(r)
  if type(r) ~= "table" then
    return false
  end
  if r.co2 == cjson.null then r.co2 = nil end -- JSON null: missing
  if r.ts == cjson.null then r.ts = nil end
  local pm25 = r.pm25
  return type(r.device) == "string" and #r.device > 0 and #r.device <= 200 -- routing keys: 255 bytes
     and type(pm25) == "number" and pm25 == pm25 and pm25 > -math.huge and pm25 < math.huge
     and optional(r.co2) and optional(r.ts)
end

local job = ember.job { name = "sensor_pipeline", batch_interval = "1s" }

local readings = job:kafka { brokers = brokers, topic = "datapoints", group = "sensor_pipeline",
                             start = "earliest" }
  :map(cjson.decode) -- nil for broken JSON: dropped
  :filter(well_formed)

readings:to_redis {
  url = redis_url,
  command = function(r)
    return "HSET", "sensor:" .. r.device, "pm25", r.pm25, "co2", r.co2 or "", "ts", r.ts or ""
  end,
}

readings
  :filter(function(r) return r.pm25 > PM25_ALERT end)
  :to_rabbitmq {
    url = rabbitmq_url,
    exchange = "amq.topic",
    routing_key = function(r) return "pm25." .. r.device end,
    body = function(r) return cjson.encode { device = r.device, pm25 = r.pm25, ts = r.ts } end,
  }

return job
