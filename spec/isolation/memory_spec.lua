-- Isolation: a job that keeps growing (1 MiB strings kept in an upvalue)
-- meets its `memory` cap; its batch fails with an error naming the job and
-- its usage, the job is stopped, and the driver and a healthy job go on.

local driver = require "support.driver"
local iso = require "support.isolation"

local BOMB = [[
local ember = require "ember"
local job = ember.job { name = "bomb", batch_interval = "500ms", memory = "48m" }
local keep = {}
job:generator { kind = "sequence", rate = 20 }
   :map(function(x)
       keep[#keep + 1] = string.rep(x, 1024 * 1024 / #x + 1)
       return x
   end)
   :foreach_batch(function(records) end)
return job
]]

-- A small table per record at a high rate: the JIT compiles the runtime's
-- record loop with this filter inlined, so the cap is crossed inside a
-- trace that runs on into the runtime's code before it checks the hook.
-- Line 6 (or 7, the instruction after it) is the one the error must name.
-- (A filter: the records reach the output as they are, with no copy made
-- by the runtime after the job's last call, where a crossing is named as
-- the runtime's.)
local TABLES = [[
local ember = require "ember"
local job = ember.job { name = "tables", batch_interval = "500ms", memory = "32m" }
local keep = {}
job:generator { kind = "sequence", rate = 200000 }
   :filter(function(x)
       keep[#keep + 1] = { x, x }
       return true
   end)
   :foreach_batch(function(records) end)
return job
]]

-- memory = 0: no cap, whatever the default; each
-- batch writes what the state holds (KiB).
local UNCAPPED = [[
local ember = require "ember"
local job = ember.job { name = "uncapped", batch_interval = "500ms", memory = 0 }
local keep = {}
job:generator { kind = "sequence", rate = 20 }
   :map(function(x)
       keep[#keep + 1] = string.rep(x, 256 * 1024 / #x + 1)
       return x
   end)
   :foreach_batch(function(records)
       local f = assert(io.open({{out}}, "w"))
       f:write(math.floor(collectgarbage("count")), "\n")
       f:close()
   end)
return job
]]

local function rss_kb(pid)
    for line in io.lines("/proc/" .. pid .. "/status") do
        local kb = line:match("^VmRSS:%s+(%d+)")
        if kb then return tonumber(kb) end
    end
end

describe("a memory bomb", function()
    local d

    before_each(function()
        d = driver.new()
        iso.write_healthy(d)
    end)

    after_each(function()
        d:stop()
    end)

    it("stops at its cap with an error naming the job and its usage; the others go on", function()
        d:write_job("bomb.lua", BOMB)
        d:start { conf = iso.conf() }
        d:wait_for_log("running 2 jobs", 30)
        local mark = d:log_mark()
        local line = d:wait_for_log("%[bomb%] job 'bomb': batch %d+: its Lua state reached", 60)
        local reached, cap = line:match("reached ([%d.]+) MiB, over its memory cap of ([%d.]+) MiB")
        assert.equal(48, tonumber(cap), line)
        assert.is_true(tonumber(reached) > 48 and tonumber(reached) < 52, line)
        d:wait_for_log("%[bomb%] job stopped", 10)
        local delays = iso.wait_healthy_batches(d, 10, mark, 60)
        assert.is_true(iso.p95(delays) < iso.INTERVAL_MS, "healthy p95 " .. iso.p95(delays) .. " ms")
        assert.is_true(iso.assert_contiguous(d) > 0)
        -- the driver holds the capped state and no more (ThreadSanitizer's
        -- shadow memory alone is more than that)
        local rss = rss_kb(d.pid)
        if os.getenv("EMBER_SANITIZER") ~= "thread" then
            assert.is_true(rss < 200 * 1024, "ember RSS " .. rss .. " kB")
        end
        print(string.format("memory bomb: stopped at %s MiB of a %s MiB cap; ember RSS %d kB; healthy "
                            .. "p95 %d ms", reached, cap, rss, iso.p95(delays)))
    end)

    it("names the job's own line when a compiled loop crosses the cap in the runtime", function()
        d:write_job("tables.lua", TABLES)
        d:start { conf = iso.conf() }
        local line = d:wait_for_log("%[tables%] job 'tables': batch %d+: its Lua state reached", 60)
        -- the job's own lines: the table made at 6, or `keep` growing at 6 seen at 7
        local at = line:match("crossing it at (%S+) ")
        assert.truthy(at == d.jobs_dir .. "/tables.lua:6" or at == d.jobs_dir .. "/tables.lua:7", line)
        d:wait_for_log("%[tables%] job stopped %(memory cap%)", 10)
        assert.is_true(#iso.wait_healthy_batches(d, 4, nil, 60) >= 4)
    end)

    it("with memory = 0 is not capped by a smaller streaming.job.memory", function()
        d:write_job("uncapped.lua", driver.render(UNCAPPED, { out = driver.quote(d:path("held")) }))
        d:start { conf = iso.conf { ["streaming.job.memory"] = "16m" } }
        d:wait_until(function()
            local held = tonumber((driver.read_file(d:path("held")) or ""):match("%d+"))
            return held and held > 40 * 1024, tostring(held) .. " KiB held"
        end, 60, 0.2, "the uncapped job holding more than 40 MiB")
        assert.equal(0, #d:log_lines("[uncapped] job stopped", { plain = true }))
    end)

    it("refuses a memory option that is not a size", function()
        d:write_job("bad.lua", [[
local ember = require "ember"
local job = ember.job { name = "bad", memory = "lots" }
job:generator { kind = "sequence" }:foreach_batch(function() end)
return job
]])
        local code, _, err = d:exec({ "check", d.jobs_dir .. "/bad.lua" }, 30)
        assert.equal(1, code)
        assert.truthy(err:find("bad.lua:2: bad option 'memory' to 'job'", 1, true), err)
    end)
end)
