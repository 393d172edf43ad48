-- Kafka in and out: sensor readings arrive as JSON on the topic "datapoints"
-- (consumer group "kafka_example"); readings with a PM2.5 above 100 go to the
-- topic "alerts", keyed by device. An offset is committed only once the
-- alert batch holding it was confirmed by the cluster (delivery reports, with
-- acks=all): a crash at any point loses nothing.
--
-- Set EMBER_KAFKA_BROKERS (host:port[,host:port...]) to run it; the topics
-- must exist. Feed it with, for example:
--   echo '{"device":"sensor-07","pm25":140.5}' | kcat -b "$EMBER_KAFKA_BROKERS" -P -t datapoints
-- and watch the alerts with
--   kcat -b "$EMBER_KAFKA_BROKERS" -C -t alerts -f '%k %s\n'
local ember = require "ember"
local cjson = require "cjson.safe"  -- to encode the alerts

local brokers = os.getenv("EMBER_KAFKA_BROKERS")
if not brokers or brokers == "" then
  return ember.disabled("set EMBER_KAFKA_BROKERS to run this job")
end

local job = ember.job { name = "kafka_example", batch_interval = "1s" }

-- format = "json": readings arrive decoded (ember.json, the fast path);
-- broken JSON is skipped, counted and logged by on_error (its offset is
-- still committed).
job:kafka { brokers = brokers, topic = "datapoints", group = "kafka_example",
            start = "earliest", max_rate_per_partition = 5000, format = "json" }
  :filter(function(r)
    return type(r) == "table" and type(r.device) == "string" and type(r.pm25) == "number"
           and r.pm25 > 100
  end)
  :to_kafka {
    brokers = brokers,
    topic = "alerts",
    key = function(r) return r.device end,
    value = function(r) return cjson.encode { device = r.device, pm25 = r.pm25, alert = "pm25" } end,
  }

return job
