-- The throughput benchmark: generator → map → filter → reduce_by_key → count
-- on 100-byte records over 1000 keys (issue 2's figure).
local ember = require "ember"

local job = ember.job { name = "bench_pipeline", batch_interval = "1s" }

job:generator { kind = "text", size = 100, keys = 1000, rate = 0,
                count = tonumber(os.getenv("BENCH_RECORDS")) or 20000000,
                max_rate = tonumber(os.getenv("BENCH_RATE")) or 3000000 }
  :map(function(line) return line:sub(1, 8), 1 end)
  :filter(function(key, n) return key:byte(5) ~= 0 end)
  :reduce_by_key(function(a, b) return a + b end)
  :count()
  :foreach_batch(function(records, info) end)

return job
