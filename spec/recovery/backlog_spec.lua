-- Recovery: no firehose after an outage. While the driver was down a
-- backlog built up (lines waiting at a sender, batches left in the
-- write-ahead log); when it comes back, the first batches respect
-- streaming.backpressure.initialRate (or the source's max_rate): at most
-- rate x batch interval plus one block's worth of records each.

local driver = require "support.driver"
local rec = require "support.recovery"


-- Each batch costs a few milliseconds, so the PID estimator always has a
-- processing time to work with.
local JOB = [[
local ember = require "ember"
local socket = require "socket"
local job = ember.job { name = "backlog", batch_interval = "500ms" }

job:socket { host = "127.0.0.1", port = {{port}} {{max_rate}} }
   :save_as_text_files({{out}})
   :foreach_batch(function(records)
       local t = socket.gettime() + 0.005
       while socket.gettime() < t do end
   end)

return job
]]

local BATCH_S, BLOCK_S = 0.5, 0.1
local R = 1000
local BOUND = R * BATCH_S + R * BLOCK_S


describe("a backlog after an outage", function()
    local d, s

    before_each(function()
        d = driver.new()
        s = d:own(rec.sender())
    end)

    after_each(function()
        d:stop()
    end)

    local function write_job(max_rate)
        d:write_job("backlog", driver.render(JOB, {
            port = s:port(), out = driver.quote(d:path("out/b")),
            max_rate = max_rate and (", max_rate = " .. max_rate) or "" }))
    end

    local function conf(extra)
        local c = driver.conf { ["streaming.batchInterval"] = "500ms" }
        for k, v in pairs(extra) do
            c[k] = v
        end
        return c
    end

    -- Batches of the log, in order, with the rate in force when they were
    -- cut: `initial` for those logged before the estimator's first rate
    -- (and the batch that produced it).
    local function batches_under_initial_rate()
        local out, seen_rate = {}, false
        for _, line in ipairs(d:log_lines("%[backlog%] ")) do
            if line:find("backpressure: rate", 1, true) then
                seen_rate = true
            else
                local n = line:match("%] batch %d+: (%d+) records")
                if n then
                    out[#out + 1] = tonumber(n)
                    if seen_rate then
                        break
                    end
                end
            end
        end
        return out, seen_rate
    end

    -- Segments of `per` records each, "w<i>", as ember would have left them.
    local function leave_wal(segments, per)
        local dir = rec.wal_dir(d:path("checkpoint/backlog"), 1, "socket")
        for _, p in ipairs { "checkpoint", "checkpoint/backlog", "checkpoint/backlog/wal" } do
            driver.mkdir(d:path(p))
        end
        driver.mkdir(dir)
        local want, n = {}, 0
        for seg = 1, segments do
            local t = {}
            for i = 1, per do
                n = n + 1
                t[i] = rec.wal_frame("w" .. n, { offset = n })
                want[n] = "w" .. n
            end
            rec.write_bytes(dir .. "/" .. rec.segment_name(seg), table.concat(t))
        end
        return want
    end

    it("of 50,000 lines at a sender: the first batches hold at most initialRate x interval "
       .. "plus one block", function()
        write_job()
        d:start { conf = conf { ["streaming.backpressure.enabled"] = "true",
                                ["streaming.backpressure.initialRate"] = R } }
        -- The backlog waits at the sender; the connection opens when ember starts.
        s:accept(10)
        s:queue(50000)
        s:flush(30)
        d:wait_until(function()
            local got = d:output_lines("out/b")
            return got[#got] == "50000", #got .. " lines"
        end, 30, 0.1, "all 50,000 lines out")
        -- Nothing lost or repeated, in order.
        local lines = d:output_lines("out/b")
        assert.equal(50000, #lines)
        for i = 1, 50000 do
            if lines[i] ~= tostring(i) then
                assert.equal(tostring(i), lines[i], "line " .. i)
            end
        end
        local first, seen_rate = batches_under_initial_rate()
        assert.is_true(seen_rate, "the estimator set a rate")
        local nonempty = 0
        for i, n in ipairs(first) do
            assert.is_true(n <= BOUND, string.format(
                "batch %d of the start holds %d records, more than %d/s x %gs + one %gs block "
                .. "= %d (batches under the initial rate: %s)", i, n, R, BATCH_S, BLOCK_S, BOUND,
                table.concat(first, ", ")))
            nonempty = nonempty + (n > 0 and 1 or 0)
        end
        assert.is_true(nonempty >= 2, table.concat(first, ", "))
        io.stderr:write(string.format("\n[backlog] initialRate %d, interval %gs: batches before "
                                      .. "the first PID rate: %s (bound %d)\n", R, BATCH_S,
                                      table.concat(first, ", "), BOUND))
    end)

    it("in the write-ahead log: the replay runs first, initialRate x interval per batch", function()
        local want = leave_wal(10, 200)
        write_job()
        d:start { conf = conf { ["streaming.backpressure.enabled"] = "true",
                                ["streaming.backpressure.initialRate"] = R,
                                ["streaming.receiver.writeAheadLog.enable"] = "true" } }
        s:accept(10)
        d:wait_for_log("recovered 2000 records in 10 blocks from the write%-ahead log %(0 damaged "
                       .. "bytes set aside%); they run before new input", 5)
        d:wait_for_log("write%-ahead log recovery handed over; new input next", 10)
        s:queue(100)
        s:flush(10)
        d:wait_until(function()
            local got = d:output_lines("out/b")
            return got[#got] == "100", #got .. " lines"
        end, 10, 0.05, "the new input out")
        local expected = want
        for i = 1, 100 do
            expected[#expected + 1] = tostring(i)
        end
        assert.same(expected, d:output_lines("out/b"))
        -- initialRate x interval = 500 records: whole segments of 200 while a
        -- batch holds less, so at most 500 plus one segment, as live batches.
        local sizes = {}
        for _, b in ipairs(d:batches("backlog")) do
            if b.records > 0 then
                sizes[#sizes + 1] = b.records
            end
        end
        assert.same({ 600, 600, 600, 200 }, { unpack(sizes, 1, 4) })
    end)

    it("in the write-ahead log and at a sender: no batch after the replay holds more than "
       .. "max_rate x interval plus one block", function()
        local want = leave_wal(10, 200)
        write_job(R)
        d:start { conf = conf { ["streaming.receiver.writeAheadLog.enable"] = "true" } }
        s:accept(10)
        s:queue(20000)
        -- The sender keeps the connection full while the replay runs and
        -- three more batches after it.
        local handed
        d:wait_until(function()
            s:push()
            if not handed and #d:log_lines("recovery handed over", { plain = true }) > 0 then
                handed = #d:batches("backlog")
            end
            return handed and #d:batches("backlog") >= handed + 3
        end, 20, 0.005, "three batches after the replay")
        local sizes = {}
        for _, b in ipairs(d:batches("backlog")) do
            sizes[#sizes + 1] = b.records
        end
        local out = d:output_lines("out/b")
        assert.same(want, { unpack(out, 1, #want) })
        assert.equal("1", out[#want + 1])
        for i, n in ipairs(sizes) do
            assert.is_true(n <= BOUND, string.format(
                "batch %d holds %d records, more than max_rate %d/s x %gs + one %gs block = %d "
                .. "(batches: %s)", i, n, R, BATCH_S, BLOCK_S, BOUND, table.concat(sizes, ", ")))
        end
    end)
end)
