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

local job = ember.job { name = "sensor_pipeline", batch_interval = "1s" }

local readings = job:kafka { brokers = brokers, topic = "datapoints", group = "sensor_pipeline",
                             start = "earliest" }
  :map(cjson.decode) -- nil for broken JSON: dropped
  :filter(function(r)
    return type(r) == "table" and type(r.device) == "string" and type(r.pm25) == "number"
  end)

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
