-- Isolation: a job whose map never returns (`while true do end`, compiled
-- by the JIT, no function call in the loop) is aborted at its
-- batch_timeout, its worker is free again, the job is stopped and named
-- with the batch and the line, a fixed file brings it back, and a healthy
-- job beside it stays on time the whole while.

local driver = require "support.driver"
local iso = require "support.isolation"

-- Line 7 is the loop the error must name.
local RUNAWAY = [[
local ember = require "ember"
local job = ember.job { name = {{name}}, batch_interval = "500ms", batch_timeout = "2s" }
job:generator { kind = "sequence", rate = 20 }
   :map(function(x)
       local i = 0
       if tonumber(x) > 0 then
           while true do i = i + 1 end
       end
       return x
   end)
   :foreach_batch(function(records) end)
return job
]]

local FIXED = [[
local ember = require "ember"
local job = ember.job { name = {{name}}, batch_interval = "500ms", batch_timeout = "2s" }
job:generator { kind = "sequence", rate = 20 }
   :map(function(x) return x * 2 end)
   :foreach_batch(function(records)
       local f = assert(io.open({{out}}, "a"))
       for _, v in ipairs(records) do f:write(v, "\n") end
       f:close()
   end)
return job
]]

-- CPU seconds the process used so far (utime + stime of /proc/pid/stat).
local function cpu_seconds(pid)
    local f = assert(io.open("/proc/" .. pid .. "/stat"))
    local stat = f:read("*a")
    f:close()
    local rest = stat:match("%) (.*)$")
    local fields = {}
    for w in rest:gmatch("%S+") do fields[#fields + 1] = w end
    -- after the comm: state is field 3 of stat; utime and stime are 14, 15
    return (tonumber(fields[12]) + tonumber(fields[13])) / 100
end

describe("a runaway job", function()
    local d

    before_each(function()
        d = driver.new()
        iso.write_healthy(d)
    end)

    after_each(function()
        d:stop()
    end)

    -- Starts ember with the runaway jobs named, waits until each was
    -- aborted, and checks the healthy job through it all.
    local function run_attack(names)
        for _, name in ipairs(names) do
            d:write_job(name .. ".lua", driver.render(RUNAWAY, { name = driver.quote(name) }))
        end
        d:start { conf = iso.conf() }
        d:wait_for_log("running " .. (#names + 1) .. " jobs", 30)
        local mark = d:log_mark()
        local lines = {}
        for _, name in ipairs(names) do
            lines[name] = d:wait_for_log("%[" .. name .. "%] job '" .. name .. "': batch %d+ ran past its "
                                         .. "batch_timeout of 2000 ms", 60)
        end
        -- The healthy job's batches while the attack ran, and a few after.
        local delays = iso.wait_healthy_batches(d, 12, mark, 60)
        return lines, delays
    end

    it("is aborted inside a compiled loop, named with its batch and line, and stopped", function()
        local lines, delays = run_attack({ "spin" })
        local line = lines.spin
        assert.truthy(line:find("at " .. d.jobs_dir .. "/spin.lua:7 ", 1, true), line)
        local late = tonumber(line:match("aborted (%d+) ms after the deadline"))
        assert.is_true(late < 1000, "worker free " .. late .. " ms after the deadline")
        d:wait_for_log("%[spin%] job stopped", 10)

        -- The core is free again: over 2 s the process uses well under one core.
        local before = cpu_seconds(d.pid)
        driver.sleep(2)
        local used = cpu_seconds(d.pid) - before
        assert.is_true(used < 1.0, "ember used " .. used .. " s of CPU in 2 s after the abort")

        assert.is_true(iso.p95(delays) < iso.INTERVAL_MS,
                       "healthy p95 batch delay " .. iso.p95(delays) .. " ms")
        assert.is_true(iso.assert_contiguous(d) > 0)
        print(string.format("runaway: worker free %d ms after the deadline; healthy p95 %d ms over %d "
                            .. "batches", late, iso.p95(delays), #delays))
    end)

    it("comes back from a fixed file on SIGHUP", function()
        run_attack({ "spin" })
        d:wait_for_log("%[spin%] job stopped", 10)
        d:write_job("spin.lua", driver.render(FIXED, { name = driver.quote("spin"),
                                                       out = driver.quote(d:path("spin.out")) }))
        d:signal("HUP")
        d:wait_for_log("%[spin%] restarted from its changed file", 20)
        local out
        d:wait_until(function()
            out = d:file_lines("spin.out")
            return #out >= 10, #out .. " records"
        end, 30, 0.1, "10 records from the fixed job")
        -- a sequence doubled: even numbers, one apart
        for i = 2, #out do
            assert.equal(tonumber(out[i - 1]) + 2, tonumber(out[i]))
        end
        iso.assert_contiguous(d)
    end)

    it("and a second one do not starve a healthy job on two workers", function()
        local lines, delays = run_attack({ "spin_a", "spin_b" })
        for _, name in ipairs({ "spin_a", "spin_b" }) do
            assert.truthy(lines[name]:find(name .. ".lua:7 ", 1, true), lines[name])
            d:wait_for_log("%[" .. name .. "%] job stopped", 10)
        end
        assert.is_true(iso.p95(delays) < iso.INTERVAL_MS,
                       "healthy p95 batch delay " .. iso.p95(delays) .. " ms: "
                       .. table.concat(delays, " "))
        assert.is_true(iso.assert_contiguous(d) > 0)
        print(string.format("two runaways: healthy p95 %d ms over %d batches", iso.p95(delays), #delays))
    end)

    it("refuses a batch_timeout that is not a duration", function()
        d:write_job("bad.lua", [[
local ember = require "ember"
local job = ember.job { name = "bad", batch_timeout = "soon" }
job:generator { kind = "sequence" }:foreach_batch(function() end)
return job
]])
        local code, _, err = d:exec({ "check", d.jobs_dir .. "/bad.lua" }, 30)
        assert.equal(1, code)
        assert.truthy(err:find("bad.lua:2: bad option 'batch_timeout' to 'job' (a duration such as "
                               .. "\"30s\" or a number of seconds, 0 for none, expected, got soon)",
                               1, true), err)
    end)
end)
