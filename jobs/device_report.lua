-- One stream, several outputs: per batch, the number of readings, the
-- average temperature per device, and the readings a user function could
-- not handle, set aside in a dead-letter file instead of lost.
local ember = require "ember"

local job = ember.job { name = "device_report", batch_interval = "5s", on_error = "dead_letter" }

-- format = "json": each reading arrives decoded; broken JSON goes to
-- dead_letter.jsonl with its text, as does a reading the map rejects.
local readings = job:generator { kind = "air_quality", rate = 50, devices = 8, seed = 7,
                                 format = "json" }
  :map(function(r)
    assert(type(r.temperature) == "number", "reading without a temperature")
    return r
  end)

readings:count():print()

readings
  :map(function(r) return r.device, { sum = r.temperature, n = 1 } end)
  :reduce_by_key(function(a, b) return { sum = a.sum + b.sum, n = a.n + b.n } end)
  :map_values(function(acc) return string.format("%.2f", acc.sum / acc.n) end)
  :save_as_text_files("output/device_report/avg_temperature", "tsv")

readings:foreach_batch(function(records, info)
  local hottest
  for _, r in ipairs(records) do
    if not hottest or r.temperature > hottest.temperature then
      hottest = r
    end
  end
  if hottest then
    ember.log("info", string.format("batch %d: %d readings, hottest %s at %.1f °C",
      info.time, info.count, hottest.device, hottest.temperature))
  end
end)

return job
