-- Isolation: the budget defaults (streaming.job.memory,
-- streaming.job.batchTimeout) change with ember.conf on SIGHUP, and reach
-- the next batch of every running job that sets no option of its own; a
-- healthy job beside it goes on.

local driver = require "support.driver"
local iso = require "support.isolation"

-- Keeps 256 KiB per record (about 5 MiB a second); no `memory` option.
local GROWER = [[
local ember = require "ember"
local job = ember.job { name = "grower", batch_interval = "500ms" }
local keep = {}
job:generator { kind = "sequence", rate = 20 }
   :map(function(x)
       keep[#keep + 1] = string.rep(x, 256 * 1024 / #x + 1)
       return x
   end)
   :foreach_batch(function(records) end)
return job
]]

-- Every batch takes 2 s, back in Lua every 50 ms (asleep in between, so it
-- takes no CPU from the healthy job), one every 3 s; no `batch_timeout`
-- option. Line 7 is the one a deadline names.
local SLOW = [[
local ember = require "ember"
local socket = require "socket"
local job = ember.job { name = "slow", batch_interval = "3s" }
job:generator { kind = "sequence", rate = 20 }
   :foreach_batch(function(records)
       local t = socket.gettime() + 2
       while socket.gettime() < t do socket.sleep(0.05) end
   end)
return job
]]

describe("budget defaults on SIGHUP", function()
    local d, conf

    before_each(function()
        d = driver.new()
        iso.write_healthy(d)
        conf = d:path("ember.conf")
    end)

    after_each(function()
        d:stop()
    end)

    local function start(content)
        driver.write_file(conf, content)
        d:start { conf = iso.conf(), args = { "--config", conf } }
        d:wait_for_log("running 2 jobs", 30)
    end

    local function reload(content, key, old, now)
        driver.write_file(conf, content)
        local mark = d:log_mark()
        d:signal("HUP")
        d:wait_for_log("configuration: " .. key .. " changed from '" .. old .. "' to '" .. now
                       .. "': in effect now", 20, { from = mark, plain = true })
        return mark
    end

    -- From no cap to a cap: what the state held before counts, so the job
    -- stops at 24 MiB.
    it("a streaming.job.memory set by SIGHUP stops a job that sets no memory option", function()
        d:write_job("grower.lua", GROWER)
        start("streaming.job.memory = 0\n")
        d:wait_for_log("%[grower%] batch %d+: %d+ records", 30)
        local mark = reload("streaming.job.memory = 24m\n", "streaming.job.memory", "0", "24m")
        local line = d:wait_for_log("%[grower%] job 'grower': batch %d+: its Lua state reached", 60,
                                    { from = mark })
        local reached, cap = line:match("reached ([%d.]+) MiB, over its memory cap of ([%d.]+) MiB")
        assert.equal(24, tonumber(cap), line)
        assert.is_true(tonumber(reached) > 24 and tonumber(reached) < 26, line)
        -- the job's own lines: the string (6), or the table growing at 6 seen at 7
        local at = line:match("crossing it at (%S+) ")
        assert.truthy(at == d.jobs_dir .. "/grower.lua:6" or at == d.jobs_dir .. "/grower.lua:7", line)
        d:wait_for_log("%[grower%] job stopped %(memory cap%)", 10, { from = mark })
        local delays = iso.wait_healthy_batches(d, 10, mark, 60)
        assert.is_true(iso.p95(delays) < iso.INTERVAL_MS, "healthy p95 " .. iso.p95(delays) .. " ms")
        assert.is_true(iso.assert_contiguous(d) > 0)
    end)

    it("a shorter streaming.job.batchTimeout stops a job that sets no batch_timeout", function()
        d:write_job("slow.lua", SLOW)
        start("streaming.job.batchTimeout = 60s\n")
        -- two whole 2 s batches under the 60 s deadline
        d:wait_until(function()
            local n = #d:log_lines("[slow] batch ", { plain = true })
            return n >= 2, n .. " batches"
        end, 60, 0.1, "two batches of the slow job")
        assert.equal(0, #d:log_lines("[slow] job stopped", { plain = true }))
        local mark = reload("streaming.job.batchTimeout = 1s\n", "streaming.job.batchTimeout", "60s", "1s")
        local line = d:wait_for_log("%[slow%] job 'slow': batch %d+ ran past its batch_timeout of "
                                    .. "1000 ms at .*slow%.lua:7", 60, { from = mark })
        d:wait_for_log("%[slow%] job stopped %(batch_timeout%)", 10, { from = mark })
        assert.truthy(line)
        local delays = iso.wait_healthy_batches(d, 10, mark, 60)
        assert.is_true(iso.p95(delays) < iso.INTERVAL_MS, "healthy p95 " .. iso.p95(delays) .. " ms")
    end)
end)
