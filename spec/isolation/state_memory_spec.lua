-- Isolation: a job holding a large keyed state (a million 16-byte keys,
-- numbers) keeps its process near what the state holds: the GC's pause
-- shrinks for a large heap (core/budget.c) and a Lua state's large blocks,
-- once freed, go back to the kernel (core/bigcache.c). Before both, the
-- process held 220-230 MB here for about 72 MB of state.

local driver = require "support.driver"

local JOB = [[
local ember = require "ember"
local job = ember.job { name = "big_state", batch_interval = "200ms", memory = 0 }
local fill = job:generator { kind = "sequence", rate = 0, count = 1000000, max_rate = 2000000 }
local touch = job:generator { kind = "sequence", rate = 50000, start = 1 }
fill:union(touch)
  :map(function(n) return string.format("key-%012d", tonumber(n) % 1000000), 1 end)
  :map_with_state { name = "counts", fn = function(key, one, state)
        state:set((state:get() or 0) + one)
    end }
  :foreach_batch(function() end)
return job
]]

local rss_kb = require("support.recovery").rss_kb

describe("a job with a million keys of state", function()
    local d

    before_each(function() d = driver.new() end)
    after_each(function() d:stop() end)

    it("keeps the process within 170 MB once the state is full", function()
        if os.getenv("EMBER_SANITIZER") then
            pending("the sanitizers' shadow memory is more than the bound")
            return
        end
        d:write_job("big_state.lua", JOB)
        d:start()
        d:wait_for_log("source exhausted", 180)
        -- batches of ~10,000 changed keys on the full state: their garbage,
        -- the snapshot slices and the tables' old parts come and go
        local rss
        d:wait_until(function()
            rss = rss_kb(d.pid)
            return rss < 170 * 1024, "ember RSS " .. rss .. " kB"
        end, 60, 0.5, "ember's RSS below 170 MB with a full state")
        print(string.format("a million keys of state: ember RSS %d kB", rss))
    end)
end)
