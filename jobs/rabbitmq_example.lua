-- RabbitMQ in and out: sensor readings arrive as JSON on a durable queue,
-- readings above a PM2.5 threshold become alerts published to the
-- "amq.topic" exchange under "alerts.pm25.<device>", persistent and
-- confirmed by the broker before the readings are acknowledged. A crash at
-- any point loses nothing: unacknowledged readings are delivered again.
--
-- Set EMBER_RABBITMQ_URL (amqp://user:password@host:5672/vhost) to run it;
-- feed it with, for example:
--   echo '{"device":"sensor-07","pm25":140.5}' | amqp-publish --url="$EMBER_RABBITMQ_URL" -r ember.readings -p
-- and watch the alerts with a queue bound to amq.topic, "alerts.#".
local ember = require "ember"
local cjson = require "cjson.safe"

local url = os.getenv("EMBER_RABBITMQ_URL")
if not url or url == "" then
  return ember.disabled("set EMBER_RABBITMQ_URL to run this job")
end

local PM25_ALERT = 100 -- µg/m³

local job = ember.job { name = "rabbitmq_example", batch_interval = "1s" }

job:rabbitmq { url = url, queue = "ember.readings", max_rate = 2000 } -- prefetch 4000: 2 s at max_rate
  :map(cjson.decode) -- nil for broken JSON: the element is dropped (and its message acked)
  :filter(function(r)
    return type(r) == "table" and type(r.device) == "string" and type(r.pm25) == "number"
      and r.pm25 > PM25_ALERT
  end)
  :to_rabbitmq {
    url = url,
    exchange = "amq.topic",
    routing_key = function(r) return "alerts.pm25." .. r.device end,
    body = function(r)
      return cjson.encode { device = r.device, pm25 = r.pm25, level = "high" }
    end,
  }

return job
