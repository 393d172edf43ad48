-- End to end: streaming.concurrentJobs is the number of workers running
-- batches. Two slow jobs overlap with two workers and take turns with one;
-- the batches of one job never overlap.

local driver = require "support.driver"


-- foreach_batch busy-waits (a CPU-bound output) and records when it ran.
local JOB = [[
local ember = require "ember"
local socket = require "socket"
local job = ember.job { name = {{name}}, batch_interval = "800ms" }

job:generator { kind = "sequence", rate = 20 }
   :foreach_batch(function(records, info)
       local started = socket.gettime()
       while socket.gettime() - started < 0.3 do end
       local f = assert(io.open({{spans}}, "a"))
       f:write(string.format("%d %.6f %.6f\n", info.time, started, socket.gettime()))
       f:close()
   end)

return job
]]

local SPANS = 4     -- batches per job to look at


describe("concurrentJobs", function()
    local d

    before_each(function()
        d = driver.new()
        for _, name in ipairs({ "slow_a", "slow_b" }) do
            d:write_job(name, driver.render(JOB, {
                name = driver.quote(name), spans = driver.quote(d:path(name .. ".spans")) }))
        end
    end)

    after_each(function()
        d:stop()
    end)

    -- { { time=, from=, to= } } of a job's batches.
    local function spans(name)
        local t = {}
        for _, line in ipairs(d:file_lines(name .. ".spans")) do
            local time, from, to = line:match("^(%d+) (%S+) (%S+)$")
            t[#t + 1] = { time = tonumber(time), from = tonumber(from), to = tonumber(to) }
        end
        return t
    end

    -- No spare workers (streaming.spareWorkers): a 300 ms batch counts as
    -- stuck to the scheduler, and a spare would run the other job beside it.
    local function run_until_spans(workers)
        d:start { conf = driver.conf { ["streaming.concurrentJobs"] = workers,
                                       ["streaming.spareWorkers"] = 0 } }
        d:wait_for_log("with " .. workers .. " workers", 5)
        d:wait_until(function()
            local a, b = #spans("slow_a"), #spans("slow_b")
            return a >= SPANS and b >= SPANS, a .. " and " .. b .. " batches done"
        end, 15, 0.05, SPANS .. " batches of each job")
        d:signal("TERM")
        assert.equal(0, d:wait_exit(10))
        return spans("slow_a"), spans("slow_b")
    end

    local function overlap(x, y)
        return x.from < y.to and y.from < x.to
    end

    local function count_overlaps(a, b)
        local n = 0
        for _, x in ipairs(a) do
            for _, y in ipairs(b) do
                if overlap(x, y) then
                    n = n + 1
                end
            end
        end
        return n
    end

    -- Batches of one job run one at a time and in order.
    local function assert_serial(s, name)
        for i = 2, #s do
            assert.is_true(s[i - 1].time < s[i].time, name .. ": batches out of order")
            assert.is_true(s[i - 1].to <= s[i].from, name .. ": two batches overlapped")
        end
    end

    it("runs the batches of two jobs at the same time with two workers", function()
        local a, b = run_until_spans(2)
        assert_serial(a, "slow_a")
        assert_serial(b, "slow_b")
        -- Same batch times, 300ms of work each: with a worker each they overlap.
        local same = 0
        for _, x in ipairs(a) do
            for _, y in ipairs(b) do
                if x.time == y.time then
                    same = same + 1
                    assert.is_true(overlap(x, y), string.format(
                        "batch %d of slow_a ran %.3f-%.3f, of slow_b %.3f-%.3f: no overlap",
                        x.time, x.from, x.to, y.from, y.to))
                end
            end
        end
        assert.is_true(same >= SPANS - 1, "batch times shared: " .. same)
    end)

    it("never runs two batches at once with one worker, and both jobs progress", function()
        local a, b = run_until_spans(1)
        assert_serial(a, "slow_a")
        assert_serial(b, "slow_b")
        assert.equal(0, count_overlaps(a, b))
        assert.is_true(#a >= SPANS and #b >= SPANS)
    end)
end)
