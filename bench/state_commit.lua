-- The commit benchmark of keyed state (bench/state_commit.sh): a million
-- keys of state, then 10,000 of them changed per batch. Source 1 fills the
-- state as fast as it can (BENCH_KEYS records, one per key); source 2 then
-- changes BENCH_CHANGED keys per 200 ms batch. Keys are 16-byte strings,
-- values numbers.
local ember = require "ember"

local keys = tonumber(os.getenv("BENCH_KEYS")) or 1000000
local changed = tonumber(os.getenv("BENCH_CHANGED")) or 10000

local job = ember.job { name = "state_commit", batch_interval = "200ms" }

local fill = job:generator { kind = "sequence", rate = 0, count = keys, max_rate = 2000000 }
local touch = job:generator { kind = "sequence", rate = changed * 5, start = 1 }

fill:union(touch)
  :map(function(n) return string.format("key-%012d", tonumber(n) % keys), 1 end)
  :map_with_state { name = "counts", fn = function(key, one, state)
        state:set((state:get() or 0) + one)
    end }
  :foreach_batch(function() end)

return job
