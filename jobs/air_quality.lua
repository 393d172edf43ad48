-- The default job (`make run`): air-quality sensors send PM2.5, CO2 and
-- temperature readings as JSON, and some messages arrive broken. The job
-- drops the malformed ones, takes the highest PM2.5 per device in each
-- batch, prints an alert for devices above the threshold, and saves the
-- cleaned readings, one file per batch.
local ember = require "ember"
local cjson = require "cjson.safe"

local PM25_ALERT = 100 -- µg/m³, a level worth telling someone about

local job = ember.job { name = "air_quality", batch_interval = "2s" }

local readings = job:generator { kind = "air_quality", rate = 200, devices = 20, malformed = 0.05 }
  :map(cjson.decode) -- nil for broken JSON: the element is dropped
  :filter(function(r)
    return type(r) == "table" and type(r.device) == "string" and type(r.pm25) == "number"
  end)

readings
  :map(function(r) return r.device, r.pm25 end)
  :reduce_by_key(math.max)
  :filter(function(device, pm25) return pm25 > PM25_ALERT end)
  :map(function(device, pm25) return string.format("ALERT %s PM2.5 %.1f", device, pm25) end)
  :print(20)

readings
  :map(cjson.encode)
  :save_as_text_files("output/air_quality/readings", "jsonl")

return job
