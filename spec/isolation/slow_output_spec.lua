-- Isolation: outputs that hold a worker for a long time, in Lua (a
-- busy loop) or in C (blocked in a sleep), under their batch_timeout:
-- spare workers keep a healthy job on time. A graceful stop with such a
-- job still ends within streaming.stopTimeout, and names it.

local driver = require "support.driver"
local iso = require "support.isolation"

local SLOW = [[
local ember = require "ember"
local socket = require "socket"
local job = ember.job { name = {{name}}, batch_interval = "500ms", batch_timeout = "60s" }
job:generator { kind = "sequence", rate = 20 }
   :foreach_batch(function(records)
       {{body}}
   end)
return job
]]

describe("a slow output", function()
    local d

    before_each(function()
        d = driver.new()
        iso.write_healthy(d)
    end)

    after_each(function()
        d:stop()
    end)

    it("in Lua and in C, on both workers, does not delay a healthy job", function()
        d:write_job("busy.lua", driver.render(SLOW, { name = driver.quote("busy"),
            body = "local t = os.clock() while os.clock() - t < 1.5 do end" }))
        d:write_job("blocked.lua", driver.render(SLOW, { name = driver.quote("blocked"),
            body = "socket.sleep(2)" }))
        d:start { conf = iso.conf() }
        d:wait_for_log("running 3 jobs", 30)
        local mark = d:log_mark()
        d:wait_for_log("a spare worker starts", 30)
        local delays = iso.wait_healthy_batches(d, 16, mark, 60)
        assert.is_true(iso.p95(delays) < iso.INTERVAL_MS,
                       "healthy p95 " .. iso.p95(delays) .. " ms: " .. table.concat(delays, " "))
        assert.is_true(iso.assert_contiguous(d) > 0)
        assert.is_true(#iso.delays(d, "blocked", mark) >= 2)
        print(string.format("slow outputs: healthy p95 %d ms over %d batches", iso.p95(delays), #delays))
    end)

    it("stuck past streaming.stopTimeout does not hold up a graceful stop", function()
        d:write_job("stuck.lua", driver.render(SLOW, { name = driver.quote("stuck"),
            body = "socket.sleep(120)" }))
        d:start { conf = iso.conf { ["streaming.stopTimeout"] = "3s",
                                    ["streaming.receiver.writeAheadLog.enable"] = "true" } }
        d:wait_for_log("running 2 jobs", 30)
        d:wait_for_log("%[healthy%] batch %d+: [1-9]", 30)
        driver.sleep(1) -- the stuck job's first batch is in its sleep by now
        local t0 = driver.now()
        d:signal("TERM")
        local code = d:wait_exit(30)
        local took = driver.now() - t0
        assert.equal(1, code)
        assert.is_true(took >= 2.5 and took < 10, "stopped in " .. took .. " s")
        d:wait_for_log("%[stuck%] still running a batch after streaming.stopTimeout %(3000 ms%)", 5,
                       { exit_ok = true })
        assert.same({}, d:log_lines("%[healthy%] still running", {}))
        -- the stuck batch was never acknowledged: its write-ahead log is still there
        local p = io.popen("find '" .. d.checkpoint_dir .. "/stuck/wal' -name '*.wal' | wc -l")
        local segments = tonumber(p:read("*a"))
        p:close()
        assert.is_true(segments >= 1, "write-ahead log segments of the stuck job: " .. segments)
        -- and a fixed job gets those records again at the next start
        d:write_job("stuck.lua", driver.render(SLOW, { name = driver.quote("stuck"),
            body = "local f = assert(io.open(" .. driver.quote(d:path("stuck.out"))
                   .. ", 'a')) for _, r in ipairs(records) do f:write(r, '\\n') end f:close()" }))
        d:start { conf = iso.conf { ["streaming.receiver.writeAheadLog.enable"] = "true" } }
        local line = d:wait_for_log("%[stuck%] recovered %d+ records", 30)
        local n = tonumber(line:match("recovered (%d+) records"))
        assert.is_true(n >= 1, line)
        -- recovered records come first, then the new generator's own 1, 2, ...
        d:wait_until(function()
            return #d:file_lines("stuck.out") > n, #d:file_lines("stuck.out") .. " records"
        end, 30, 0.1, "the recovered records, then new ones, in the fixed job")
        local out = d:file_lines("stuck.out")
        assert.equal("1", out[1])
        assert.equal(tostring(n), out[n])
        assert.equal("1", out[n + 1])
    end)
end)
