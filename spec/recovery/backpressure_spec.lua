-- Backpressure and bounded memory. Input five times faster than a job can
-- process: with streaming.backpressure.enabled the PID estimator brings
-- the ingest rate to what the job sustains and the driver's memory stays
-- flat. A job slower than its interval with streaming.maxWaitingBatches
-- pauses its receivers instead of queueing without end; memory.max
-- pauses every receiver before the driver grows past it.

local driver = require "support.driver"
local rec = require "support.recovery"


-- About 100 us of work per record: some 10,000 records/s at best. The
-- generator offers 50,000/s (and catches up on what it was not asked
-- for, so it always has more).
local SLOW_JOB = [[
local ember = require "ember"
local socket = require "socket"
local gettime = socket.gettime
local job = ember.job { name = "slow", batch_interval = "500ms" }

job:generator { kind = "sequence", rate = 50000 }
   :foreach_record(function(n)
       local t = gettime() + {{cost}}
       while gettime() < t do end
   end)

return job
]]

-- A batch costs 1 ms a record; the source brings 2,000/s, capped by
-- max_rate: each 200 ms batch (some 400-600 records) takes about three
-- intervals to process.
local LAGGING_JOB = [[
local ember = require "ember"
local socket = require "socket"
local gettime = socket.gettime
local job = ember.job { name = "lag", batch_interval = "200ms" }

job:generator { kind = "sequence", rate = 2000, max_rate = 2000 }
   :foreach_record(function(n)
       local t = gettime() + 0.001
       while gettime() < t do end
   end)

return job
]]


-- 16 KiB records as fast as the receiver takes them (no rate cap), into a
-- job that spends 300 ms on every batch.
local MEMORY_JOB = [[
local ember = require "ember"
local socket = require "socket"
local job = ember.job { name = "mem", batch_interval = "200ms" }

job:generator { kind = "text", rate = 0, size = 16384 }
   :foreach_batch(function(records)
       local t = socket.gettime() + 0.3
       while socket.gettime() < t do end
   end)

return job
]]


local function mean(t)
    local s = 0
    for _, v in ipairs(t) do
        s = s + v
    end
    return #t > 0 and s / #t or 0
end


describe("backpressure", function()
    local d

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    -- Samples VmRSS (kB) every `every` seconds for `seconds`, failing if
    -- ember exits meanwhile. Returns { {t=, kb=} ... }.
    local function sample_rss(seconds, every)
        local out, t0 = {}, driver.now()
        d:wait_until(function()
            if not d:running() then
                error("ember exited\n" .. d:log_tail(), 0)
            end
            out[#out + 1] = { t = driver.now() - t0, kb = rec.rss_kb(d.pid) }
            return driver.now() - t0 >= seconds
        end, seconds + 5, every, "the sampling to end")
        return out
    end

    local function max_kb(samples, from, to)
        local m = 0
        for _, s in ipairs(samples) do
            if s.t >= from and s.t < to and s.kb > m then
                m = s.kb
            end
        end
        return m
    end

    it("with input five times faster than the job: the rate settles within 20% of what the "
       .. "job sustains, and memory stays flat", function()
        d:write_job("slow", driver.render(SLOW_JOB, { cost = 0.0001 }))
        d:start { conf = driver.conf {
            ["streaming.batchInterval"] = "500ms",
            ["streaming.backpressure.enabled"] = "true",
            ["streaming.backpressure.initialRate"] = 2000,
        } }
        d:wait_for_log("%[slow%] started from", 10)
        local samples = sample_rss(14, 0.25)

        -- Log lines in order: after every batch the estimator's rate, then
        -- the batch's own line. Settled: from the 10th batch on.
        local rates, batches = {}, {}
        for _, line in ipairs(d:log_lines("%[slow%] ")) do
            local r = line:match("backpressure: rate (%d+) records/s")
            if r then
                rates[#rates + 1] = { rate = tonumber(r), after = #batches + 1 }
            end
            local n, p = line:match("batch %d+: (%d+) records? in %d+ blocks?, scheduling delay "
                                    .. "%d+ ms, processing (%d+) ms")
            if n then
                batches[#batches + 1] = { records = tonumber(n), processing = tonumber(p) }
            end
        end
        assert.is_true(#batches >= 18, #batches .. " batches in 14 s")
        local settled_from = 10
        local records, ms = 0, 0
        for i = settled_from, #batches do
            records = records + batches[i].records
            ms = ms + batches[i].processing
        end
        local sustainable = records / ms * 1000
        local settled = {}
        for _, r in ipairs(rates) do
            if r.after >= settled_from then
                settled[#settled + 1] = r.rate
            end
        end
        local within = 0
        for _, r in ipairs(settled) do
            if math.abs(r - sustainable) <= 0.2 * sustainable then
                within = within + 1
            end
        end
        local avg = mean(settled)
        io.stderr:write(string.format(
            "\n[pid] sustainable %.0f records/s (%d records in %d ms of processing); settled "
            .. "rates %s; mean %.0f (%.0f%% off); %d of %d within 20%%; RSS %d..%d kB\n",
            sustainable, records, ms, table.concat(settled, " "), avg,
            (avg / sustainable - 1) * 100, within, #settled, max_kb(samples, 0, 1),
            max_kb(samples, 0, 99)))

        -- The generator offered 50,000/s: the rate came down to what the
        -- job does.
        assert.is_true(sustainable < 20000, "sustainable " .. sustainable)
        assert.is_true(#settled >= 6, #settled .. " settled rates")
        assert.is_true(math.abs(avg - sustainable) <= 0.2 * sustainable, string.format(
            "mean settled rate %.0f is not within 20%% of the sustainable %.0f", avg, sustainable))
        -- Single batches jitter when other processes share the CPU (the
        -- job's cost is wall-clock time): two thirds of the rates are close.
        assert.is_true(within >= #settled * 2 / 3, string.format(
            "only %d of %d settled rates within 20%% of %.0f: %s", within, #settled, sustainable,
            table.concat(settled, " ")))

        -- Memory: small, and not growing over the last samples.
        local early, late = max_kb(samples, 4, 9), max_kb(samples, 9, 99)
        assert.is_true(max_kb(samples, 0, 99) < 64 * 1024, "RSS " .. max_kb(samples, 0, 99)
                       .. " kB")
        assert.is_true(late <= early + 2048, string.format(
            "RSS grew from %d kB (4-9 s) to %d kB (9-14 s)", early, late))
    end)

    it("with a job slower than its interval and maxWaitingBatches = 2: the receivers pause "
       .. "and resume, and memory stays bounded", function()
        d:write_job("lag", LAGGING_JOB)
        d:start { conf = driver.conf { ["streaming.maxWaitingBatches"] = 2 } }
        d:wait_for_log("%[lag%] started from", 10)
        local samples = sample_rss(6, 0.25)
        local paused = d:log_lines("%[lag%] %d+ batches waiting %(streaming%.maxWaitingBatches "
                                   .. "= 2%): receivers paused")
        assert.is_true(#paused >= 1, "no pause\n" .. d:log_tail())
        for _, line in ipairs(paused) do
            assert.truthy(line:match("%] 3 batches waiting"), line)
        end
        local resumed = d:log_lines("%[lag%] %d+ batches waiting %(streaming%.maxWaitingBatches "
                                    .. "= 2%): receivers resumed")
        assert.is_true(#resumed >= 1, "never resumed\n" .. d:log_tail())
        -- While paused, the source is not read: batches cut then are empty,
        -- so the records waiting stay within a few batches.
        local total = 0
        for _, b in ipairs(d:batches("lag")) do
            assert.is_true(b.records <= 2000 * 0.2 + 2000 * 0.1, b.line)
            total = total + b.records
        end
        io.stderr:write(string.format("\n[maxWaitingBatches] %d pauses, %d resumes, %d records "
                                      .. "in %d batches in 6 s, RSS max %d kB\n", #paused,
                                      #resumed, total, #d:batches("lag"), max_kb(samples, 0, 99)))
        assert.is_true(max_kb(samples, 0, 99) < 64 * 1024)
        assert.is_true(max_kb(samples, 3, 99) <= max_kb(samples, 0, 3) + 2048)
    end)

    it("with memory.max reached: every receiver pauses before the driver grows past it", function()
        -- An unthrottled source of 16 KiB records against an 8 MiB cap. The
        -- blocks stay under the cap; the batch being processed has its Lua
        -- copies on top, so the process may use a few times the cap, not more.
        d:write_job("mem", MEMORY_JOB)
        d:start { conf = driver.conf { ["memory.max"] = "8m", ["streaming.maxWaitingBatches"] = 100 } }
        d:wait_for_log("%[mem%] started from", 10)
        local samples = sample_rss(4, 0.1)
        local peak = max_kb(samples, 0, 99)
        io.stderr:write(string.format("\n[memory.max] 8m, unthrottled 16 KiB records: RSS max %d kB\n",
                                      peak))
        d:wait_for_log("%[mem%] generator{.*}: memory%.max reached: reading paused until batches "
                       .. "free blocks", 1)
        d:wait_for_log("%[mem%] generator{.*}: below memory%.max again: reading resumed", 5)
        assert.is_true(peak < 64 * 1024, string.format(
            "RSS reached %d kB with memory.max = 8m", peak))
    end)
end)
