-- End to end: a user function that raises follows the job's on_error
-- policy, and never takes the driver or the other jobs down.

local driver = require "support.driver"
local tcp = require "support.tcp"
local cjson = require "cjson"


-- Numbers 1..count; the map raises on multiples of 5.
local SEQUENCE_JOB = [[
local ember = require "ember"
local job = ember.job { name = {{name}}, batch_interval = {{interval}}, on_error = {{policy}} }

job:generator { kind = "sequence", rate = {{rate}}, count = {{count}} }
   :map(function(s)
       local n = tonumber(s)
       if n % 5 == 0 then
           error("no multiples of five: " .. n)
       end
       return n
   end)
   :save_as_text_files({{out}})

return job
]]

-- JSON lines from a socket; cjson.decode raises on the malformed ones.
local JSON_JOB = [[
local ember = require "ember"
local cjson = require "cjson"
local job = ember.job { name = "readings", batch_interval = "200ms", on_error = "dead_letter" }

job:socket { host = "127.0.0.1", port = {{port}} }
   :map(cjson.decode)
   :map(function(r) return r.device .. "=" .. r.pm25 end)
   :save_as_text_files({{out}})

return job
]]

-- A healthy neighbour.
local STEADY_JOB = [[
local ember = require "ember"
local job = ember.job { name = "steady", batch_interval = {{interval}} }

job:generator { kind = "sequence", rate = 100 }
   :save_as_text_files({{out}})

return job
]]


local function numbers(from, to, skip_fives)
    local t = {}
    for i = from, to do
        if not (skip_fives and i % 5 == 0) then
            t[#t + 1] = tostring(i)
        end
    end
    return t
end


describe("a job's on_error policy", function()
    local d

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    local function sequence_job(name, policy, count, rate, opts)
        opts = opts or {}
        return driver.render(SEQUENCE_JOB, {
            name = driver.quote(name), policy = driver.quote(policy), count = count,
            rate = rate or 200, interval = driver.quote(opts.interval or "200ms"),
            out = driver.quote(d:path("out/" .. (opts.out or name))) })
    end

    local function write_sequence_job(name, policy, count, rate, opts)
        d:write_job(name, sequence_job(name, policy, count, rate, opts))
    end

    local function write_steady_job(interval)
        d:write_job("steady", driver.render(STEADY_JOB, {
            interval = driver.quote(interval or "200ms"), out = driver.quote(d:path("out/steady")) }))
    end

    -- Waits for n lines of output of prefix, then two more batches of job.
    local function wait_output(prefix, n, job)
        d:wait_until(function()
            local got = #d:output_lines(prefix)
            return got >= n, got .. " of " .. n .. " lines"
        end, 10, 0.05, n .. " lines of " .. prefix)
        d:wait_for_log("%[" .. job .. "%] batch %d+:", 5, { from = d:log_mark(), count = 2 })
        return d:output_lines(prefix)
    end

    local function failed_in_batches(job)
        local n = 0
        for _, b in ipairs(d:batches(job)) do
            n = n + b.failed
        end
        return n
    end

    describe("skip", function()
        it("drops the records that raised, lets the others through and counts the failures", function()
            write_sequence_job("skipper", "skip", 100)
            d:start()
            local out = wait_output("out/skipper", 80, "skipper")
            assert.same(numbers(1, 100, true), out)
            assert.equal(20, failed_in_batches("skipper"))
            -- One warning per batch with failures, naming how many and the first error.
            local warned = 0
            for _, line in ipairs(d:log_lines("%[skipper%] batch %d+: %d+ records? failed, skipped")) do
                assert.truthy(line:find(" warn ", 1, true), line)
                assert.truthy(line:find("first error: .*skipper%.lua:%d+: no multiples of five: %d+"),
                              line)
                warned = warned + tonumber(line:match("batch %d+: (%d+) records? failed"))
            end
            assert.equal(20, warned)
            assert.is_true(d:running())
        end)

        it("keeps the driver and its other jobs running while records keep failing", function()
            write_sequence_job("skipper", "skip", 0)    -- endless
            write_steady_job()
            d:start()
            d:wait_until(function()
                return failed_in_batches("skipper") >= 200, failed_in_batches("skipper") .. " failed"
            end, 10, 0.05, "200 failures")
            d:wait_for_log("%[steady%] batch %d+:", 5, { from = d:log_mark(), count = 2 })
            assert.is_true(d:running())
            local steady = d:output_lines("out/steady")
            assert.same(numbers(1, #steady), steady)
            assert.is_true(#steady > 0)
            -- The failing job still hands its good records on.
            local good = d:output_lines("out/skipper")
            assert.is_true(#good > 0)
            for _, v in ipairs(good) do
                assert.is_true(tonumber(v) % 5 ~= 0, v)
            end
        end)
    end)

    describe("dead_letter", function()
        it("writes each record that raised, as it came in, with its error to dead_letter.jsonl", function()
            local srv = d:own(tcp.server())
            d:write_job("readings", driver.render(JSON_JOB, {
                port = srv.port, out = driver.quote(d:path("out/readings")) }))
            d:start()
            srv:accept(10)
            local bad = {
                '{"device":"s1","pm25":',
                'sensor-07 pm25=12.5',
                '{"device":"s3","pm25":12.5}}',
                '',
                '\t"tab and \\ backslash" ünïcödé',
            }
            srv:send_lines({
                '{"device":"s1","pm25":10}', bad[1], bad[2],
                '{"device":"s2","pm25":20.5}', bad[3], bad[4],
                '{"device":"s3","pm25":30}', bad[5],
            })
            local out = wait_output("out/readings", 3, "readings")
            assert.same({ "s1=10", "s2=20.5", "s3=30" }, out)

            local path = d.checkpoint_dir .. "/readings/dead_letter.jsonl"
            local letters = {}
            for _, line in ipairs(d:file_lines(path)) do
                letters[#letters + 1] = cjson.decode(line)
            end
            local records, batch_times = {}, {}
            for _, b in ipairs(d:batches("readings")) do
                batch_times[b.time] = true
            end
            for i, l in ipairs(letters) do
                records[i] = l.record
                assert.equal("readings", l.job)
                assert.is_number(l.batch_time)
                assert.is_true(batch_times[l.batch_time], "no batch " .. tostring(l.batch_time))
                assert.is_string(l.error)
                assert.is_true(#l.error > 0)
            end
            assert.same(bad, records)
            assert.equal(#bad, failed_in_batches("readings"))
            assert.truthy(d:log_lines("%[readings%] batch %d+: %d+ records? failed, written to "
                                      .. d.checkpoint_dir:gsub("%p", "%%%0")
                                      .. "/readings/dead_letter%.jsonl")[1])
            assert.is_true(d:running())
        end)

        it("names the user's file and line in the error of a dead letter", function()
            write_sequence_job("lettered", "dead_letter", 12)
            d:start()
            wait_output("out/lettered", 10, "lettered")
            assert.same(numbers(1, 12, true), d:output_lines("out/lettered"))
            local letters = {}
            for _, line in ipairs(d:file_lines(d.checkpoint_dir .. "/lettered/dead_letter.jsonl")) do
                letters[#letters + 1] = cjson.decode(line)
            end
            assert.equal(2, #letters)
            assert.equal("5", letters[1].record)
            assert.equal("10", letters[2].record)
            assert.truthy(letters[1].error:find("lettered%.lua:8: no multiples of five: 5$"),
                          letters[1].error)
        end)
    end)

    describe("fail", function()
        it("stops the job with its error logged while another job keeps producing batches", function()
            -- 4 records per 200ms batch: 1..4 go out, the batch with 5 fails.
            write_sequence_job("fragile", "fail", 0, 20)
            write_steady_job()
            d:start()
            local line = d:wait_for_log("%[fragile%] job stopped %(on_error = fail%)", 10)
            assert.truthy(line:find(" error ", 1, true), line)
            assert.truthy(line:find("fragile%.lua:8: no multiples of five: 5"), line)

            -- The steady job goes on: three more batches, its records contiguous.
            local mark = d:log_mark()
            d:wait_for_log("%[steady%] batch %d+: [1-9]%d* records", 5, { from = mark, count = 3 })
            local steady = d:output_lines("out/steady")
            assert.same(numbers(1, #steady), steady)
            -- The failed job runs no batch after stopping.
            assert.same({}, d:log_lines("%[fragile%] batch %d+:", { from = mark }))
            -- What it put out before the failure is a clean prefix 1..k, k < 5.
            local out = d:output_lines("out/fragile")
            assert.is_true(#out < 5)
            assert.same(numbers(1, #out), out)
            assert.is_true(d:running())
        end)

        -- The job fails at 5, then its file is fixed and SIGHUP sent:
        -- the fixed version runs from a fresh source.
        local function fail_then_fix(interval, right_away)
            write_sequence_job("fragile", "fail", 0, 20, { interval = interval })
            write_steady_job(interval)
            d:start { conf = driver.conf { ["streaming.blockInterval"] = "100ms",
                                           ["streaming.batchInterval"] = interval } }
            d:wait_for_log("%[fragile%] job stopped %(on_error = fail%)", 10)
            if not right_away then
                -- A few batches of the other job: the driver has seen the failure.
                d:wait_for_log("%[steady%] batch %d+:", 5, { from = d:log_mark(), count = 3 })
            end
            d:write_job("fragile", (sequence_job("fragile", "fail", 0, 20,
                { interval = interval, out = "fixed" }):gsub("n %% 5 == 0", "false")))
            d:signal("HUP")
            d:wait_until(function()
                local n = #d:output_lines("out/fixed")
                return n >= 10, n .. " records from the fixed version"
            end, 10, 0.05, "the fixed version of the job to run")
            local out = d:output_lines("out/fixed")
            assert.same(numbers(1, #out), out)
        end

        it("runs again once its file is fixed and SIGHUP is sent", function()
            fail_then_fix("200ms")
        end)

        it("runs again once its file is fixed, even when SIGHUP comes right after the failure", function()
            -- The failure is seen by the driver at the next block tick;
            -- the SIGHUP comes before it (a few ms after the failure).
            fail_then_fix("200ms", true)
        end)
    end)
end)
