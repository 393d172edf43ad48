-- Isolation: the disk under the write-ahead log fills up and is freed
-- again. Each receiver logs one error for the outage and one line when it
-- ends, not one per record; a healthy job stays on time throughout.

local driver = require "support.driver"
local iso = require "support.isolation"
local small_disk = require "support.small_disk"

local WAL_JOB = [[
local ember = require "ember"
local job = ember.job { name = "walled", batch_interval = "500ms" }
job:generator { kind = "text", size = 200, rate = 500 }
   :count()
   :foreach_batch(function(records) end)
return job
]]

describe("a full disk under the write-ahead log", function()
    local d, disk

    before_each(function()
        d = driver.new()
        iso.write_healthy(d)
        disk = small_disk.mount(d.checkpoint_dir, "4m")
    end)

    after_each(function()
        disk:unmount()
        d:stop()
    end)

    it("logs one error per outage and one line when it ends", function()
        d:write_job("walled.lua", WAL_JOB)
        d:start { conf = iso.conf { ["streaming.receiver.writeAheadLog.enable"] = "true" } }
        d:wait_for_log("running 2 jobs", 30)
        d:wait_for_log("%[walled%] batch %d+: [1-9]", 30)
        local mark = d:log_mark()
        disk:fill()
        -- both receivers write to the log: each meets the full disk
        d:wait_for_log("write%-ahead log: No space left on device", 20, { count = 2, from = mark })
        local full = d:log_mark()
        local delays = iso.wait_healthy_batches(d, 8, full, 60) -- 4 s of outage
        local errors = d:log_lines("write-ahead log: No space left on device", { plain = true, from = mark })
        assert.equal(2, #errors, table.concat(errors, "\n"))
        assert.same({}, d:log_lines("write-ahead log works again", { plain = true, from = mark }))
        disk:free()
        d:wait_for_log("write%-ahead log works again", 20, { count = 2, from = mark })
        local after = d:log_mark()
        iso.wait_healthy_batches(d, 6, after, 60)
        assert.equal(2, #d:log_lines("write-ahead log works again", { plain = true, from = mark }))
        assert.equal(2, #d:log_lines("write-ahead log: No space left", { plain = true, from = mark }))
        assert.is_true(iso.p95(delays) < iso.INTERVAL_MS, "healthy p95 " .. iso.p95(delays) .. " ms")
        assert.is_true(iso.assert_contiguous(d) > 0)
        print(string.format("full disk under the WAL: healthy p95 %d ms over %d batches", iso.p95(delays),
                            #delays))
    end)
end)
