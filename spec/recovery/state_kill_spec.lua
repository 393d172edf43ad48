-- Recovery: keyed state across kill -9, again and again. A job counts its
-- records per key with update_state_by_key and writes the whole state after
-- every batch; a second output appends every record it sees to out.<run>.
--
-- Outputs are at-least-once: a record may be written twice (a kill between
-- a batch's output and its commit), never lost. State must be exactly-once:
-- whatever the kills did, the final count of each key equals the number of
-- distinct records of that key the job ever saw. For Kafka, those are all
-- the records produced. For a socket with the write-ahead log they are the
-- records the log took in (TCP acknowledges before ember reads, so a kill
-- loses the tail still in the kernel: by design, docs/semantics.md).
-- EMBER_SPEC_SEED reruns the same kill moments.

local driver = require "support.driver"
local rec = require "support.recovery"
local kafka_mock = require "support.kafka_mock"
local redis_server = require "support.redis_server"

local now = driver.now
local str_format = string.format


local JOB = [[
local ember = require "ember"
local job = ember.job { name = "tally", batch_interval = "200ms" }

local dir = {{dir}}
local run = assert(io.open(dir .. "/run")):read("*l")
local out = dir .. "/out." .. run

local records = job:{{source}} { {{options}} }

records:foreach_batch(function(batch)
    if #batch > 0 then
        local f = assert(io.open(out, "a"))
        f:write(table.concat(batch, "\n"), "\n")
        f:close()
    end
end)

records:map(function(v) return "k" .. (tonumber(v:match("%d+")) % 37), 1 end)
       :update_state_by_key(function(values, count) return (count or 0) + #values end)
       :foreach_batch(function(counts)
           local t = {}
           for i, p in ipairs(counts) do
               t[i] = p[1] .. " " .. p[2]
           end
           local f = assert(io.open(dir .. "/state.tmp", "w"))
           f:write(table.concat(t, "\n"), "\n")
           f:close()
           assert(os.rename(dir .. "/state.tmp", dir .. "/state.txt"))
       end)

return job
]]


local function key_of(v)
    return "k" .. (tonumber(v:match("%d+")) % 37)
end


-- The distinct records every run wrote (a torn last line is not a record).
local function seen_records(d, runs)
    local seen, list = {}, {}
    for run = 1, runs do
        local s = driver.read_file(d:path("out." .. run)) or ""
        for line in s:gmatch("([^\n]*)\n") do
            if line ~= "" and not seen[line] then
                seen[line] = true
                list[#list + 1] = line
            end
        end
    end
    return seen, list
end


-- The job's last written state: key -> count, and the sum.
local function last_state(d)
    local s = driver.read_file(d:path("state.txt")) or ""
    local counts, sum = {}, 0
    for k, n in s:gmatch("(%S+) (%d+)\n") do
        counts[k] = tonumber(n)
        sum = sum + tonumber(n)
    end
    return counts, sum
end


-- Per key, what the distinct records say the count must be.
local function expected_counts(list)
    local want = {}
    for _, v in ipairs(list) do
        local k = key_of(v)
        want[k] = (want[k] or 0) + 1
    end
    return want
end


local function assert_exact(d, runs, ctx)
    local _, list = seen_records(d, runs)
    local want = expected_counts(list)
    local got = last_state(d)
    local wrong = {}
    for k, n in pairs(want) do
        if got[k] ~= n then
            wrong[#wrong + 1] = str_format("%s: state %s, records %d", k, tostring(got[k]), n)
        end
    end
    for k, n in pairs(got) do
        if not want[k] then
            wrong[#wrong + 1] = str_format("%s: state %d, no record", k, n)
        end
    end
    table.sort(wrong)
    assert(#wrong == 0, ctx .. ": " .. #wrong .. " keys wrong, " .. table.concat(wrong, "; ", 1,
                                                                              math.min(5, #wrong)))
    return list
end


local function seeded()
    local seed = tonumber(os.getenv("EMBER_SPEC_SEED")) or os.time()
    math.randomseed(seed)
    return str_format("seed %d (EMBER_SPEC_SEED reruns it)", seed)
end


describe("keyed state across kill -9", function()
    local d

    after_each(function()
        if d then
            d:stop()
        end
    end)

    describe("with a Kafka source", function()
        local KILLS = 30
        local COUNT = 12000
        local mock

        setup(function()
            mock = kafka_mock.start { topics = { "tally_in:4" } }
        end)

        teardown(function()
            if mock then
                mock:stop()
            end
        end)

        it("counts every produced record exactly once per key, over " .. KILLS .. " kills",
           function()
            local ctx = seeded()
            local produced = {}
            for i = 1, COUNT do
                produced[i] = str_format("k%06d", i)
            end
            mock:produce("tally_in", produced)
            d = driver.new()
            d:write_job("tally", driver.render(JOB, {
                dir = driver.quote(d:path()), source = "kafka",
                options = "brokers = " .. driver.quote(mock.bootstrap) .. ', topic = "tally_in", '
                          .. 'group = "tally", start = "earliest", max_rate = 400, '
                          .. kafka_mock.CLIENT,
            }))
            local conf = driver.conf()
            for run = 1, KILLS + 1 do
                driver.write_file(d:path("run"), run .. "\n")
                d:start { conf = conf }
                -- A group join takes about 3 s against the mock, more while
                -- the killed member's session has not expired.
                d:wait_for_log("assigned tally_in", 60)
                if run <= KILLS then
                    local kill_at = now() + 0.2 + math.random() * 0.8
                    d:wait_until(function()
                        return now() >= kill_at
                    end, 5, 0.01, "the moment of kill " .. run)
                    assert.is_true(d:running(), "ember exited in run " .. run)
                    d:signal("KILL")
                    assert.equal(128 + 9, d:wait_exit(10))
                else
                    d:wait_until(function()
                        local _, sum = last_state(d)
                        return sum >= COUNT, sum .. " of " .. COUNT .. " counted"
                    end, 240, 0.2, "every record counted in the last run")
                    d:signal("TERM")
                    assert.equal(0, d:wait_exit(20))
                end
            end
            local list = assert_exact(d, KILLS + 1, ctx)
            assert.equal(COUNT, #list, ctx .. ": records that never came out")
            -- Some kills came after the first commit: the state was restored.
            assert.is_true(#d:log_lines("state restored up to batch", { plain = true }) > 0)
        end)
    end)

    describe("with a socket source and the write-ahead log", function()
        local KILLS = 30

        it("counts every record the log took in exactly once per key, over " .. KILLS
           .. " kills", function()
            local ctx = seeded()
            d = driver.new()
            local s = d:own(rec.sender())
            d:write_job("tally", driver.render(JOB, {
                dir = driver.quote(d:path()), source = "socket",
                options = 'host = "127.0.0.1", port = ' .. s:port(),
            }))
            local conf = driver.conf {
                ["streaming.receiver.writeAheadLog.enable"] = "true",
                ["streaming.receiver.maxRate"] = 4000,
            }
            for run = 1, KILLS + 1 do
                driver.write_file(d:path("run"), run .. "\n")
                d:start { conf = conf }
                s:accept(10)
                if run <= KILLS then
                    s:pump(0.2 + math.random() * 0.6, 5000)
                    d:signal("KILL")
                    assert.equal(128 + 9, d:wait_exit(10))
                    s:close_conn()
                else
                    -- Nothing new: the log's records run, then the state is
                    -- stable; it must match what came out.
                    d:wait_until(function()
                        local _, list = seen_records(d, run)
                        local _, sum = last_state(d)
                        return #list > 0 and sum == #list, sum .. " counted, " .. #list
                               .. " distinct records out"
                    end, 120, 0.2, "the state to cover every record out")
                    d:signal("TERM")
                    assert.equal(0, d:wait_exit(20))
                end
            end
            local list = assert_exact(d, KILLS + 1, ctx)
            -- Only numbers the sender sent, each once.
            local seen = {}
            for _, v in ipairs(list) do
                local n = tonumber(v)
                assert(n and n >= 1 and n < s.next and not seen[n], ctx .. ": invented " .. v)
                seen[n] = true
            end
            assert.is_true(#list > 1000, ctx .. ": only " .. #list .. " records went through")
        end)
    end)

    -- The moment a timed kill almost never hits: the checkpoint (state and
    -- positions) is committed, the brokers have not heard of it yet. A
    -- failpoint kills ember exactly there; the brokers then hand those
    -- records out again, and the state must not count them twice.
    describe("crashed between a batch's commit and its acknowledgements", function()
        local mock

        setup(function()
            mock = kafka_mock.start { topics = { "fp_in:2" } }
        end)

        teardown(function()
            if mock then
                mock:stop()
            end
        end)

        it("counts the Kafka records of that batch once: the partitions resume from the "
           .. "checkpoint", function()
            local produced = {}
            for i = 1, 3000 do
                produced[i] = str_format("k%06d", i)
            end
            mock:produce("fp_in", produced)
            d = driver.new()
            d:write_job("tally", driver.render(JOB, {
                dir = driver.quote(d:path()), source = "kafka",
                options = "brokers = " .. driver.quote(mock.bootstrap) .. ', topic = "fp_in", '
                          .. 'group = "fp", start = "earliest", max_rate = 2000, '
                          .. kafka_mock.CLIENT,
            }))
            driver.write_file(d:path("run"), "1\n")
            d:start { env = { EMBER_FAILPOINT = "after_commit:4" } }
            assert.equal(128 + 9, d:wait_exit(60))
            assert.equal(1, #d:log_lines("failpoint after_commit reached", { plain = true }))
            driver.write_file(d:path("run"), "2\n")
            d:start {}
            d:wait_until(function()
                local _, sum = last_state(d)
                return sum >= #produced, sum .. " of " .. #produced .. " counted"
            end, 60, 0.1, "every record counted")
            d:signal("TERM")
            assert.equal(0, d:wait_exit(20))
            local list = assert_exact(d, 2, "kafka failpoint")
            assert.equal(#produced, #list)
            assert.is_true(#d:log_lines("resumes at offset %d+ from the job's checkpoint") > 0)
        end)

        it("counts the Redis stream entries of that batch once: its own pending entries "
           .. "already counted are acknowledged, not read again", function()
            local srv = redis_server.start()
            local ok, err = pcall(function()
                local cmds = {}
                for i = 1, 3000 do
                    cmds[i] = { "XADD", "fp_stream", "*", "value", str_format("s%06d", i) }
                end
                srv:pipe(cmds)
                d = driver.new()
                d:write_job("tally", driver.render(JOB, {
                    dir = driver.quote(d:path()), source = "redis",
                    options = "url = " .. driver.quote(srv.url)
                              .. ', mode = "stream", key = "fp_stream", max_rate = 2000',
                }))
                driver.write_file(d:path("run"), "1\n")
                d:start { env = { EMBER_FAILPOINT = "after_commit:3" } }
                assert.equal(128 + 9, d:wait_exit(60))
                driver.write_file(d:path("run"), "2\n")
                d:start {}
                d:wait_until(function()
                    local _, sum = last_state(d)
                    return sum >= 3000, sum .. " of 3000 counted"
                end, 60, 0.1, "every entry counted")
                d:signal("TERM")
                assert.equal(0, d:wait_exit(20))
                local list = assert_exact(d, 2, "redis stream failpoint")
                assert.equal(3000, #list)
                assert.is_true(#d:log_lines("are in the job's committed state", { plain = true })
                               > 0)
            end)
            srv:stop()
            assert(ok, err)
        end)

        it("counts the write-ahead log records of that batch once: its segments are not "
           .. "replayed", function()
            d = driver.new()
            local s = d:own(rec.sender())
            d:write_job("tally", driver.render(JOB, {
                dir = driver.quote(d:path()), source = "socket",
                options = 'host = "127.0.0.1", port = ' .. s:port(),
            }))
            local conf = driver.conf { ["streaming.receiver.writeAheadLog.enable"] = "true",
                                       ["streaming.receiver.maxRate"] = 2000 }
            driver.write_file(d:path("run"), "1\n")
            d:start { conf = conf, env = { EMBER_FAILPOINT = "after_commit:2" } }
            s:accept(10)
            s:queue(2000)
            s:flush(30)
            assert.equal(128 + 9, d:wait_exit(60))
            s:close_conn()
            driver.write_file(d:path("run"), "2\n")
            d:start { conf = conf }
            s:accept(10)
            d:wait_until(function()
                local _, list = seen_records(d, 2)
                local _, sum = last_state(d)
                return #list > 0 and sum == #list, sum .. " counted, " .. #list .. " out"
            end, 60, 0.1, "the state to cover every record out")
            d:signal("TERM")
            assert.equal(0, d:wait_exit(20))
            assert_exact(d, 2, "wal failpoint")
            assert.is_true(#d:log_lines("already in its state; not replayed", { plain = true }) > 0)
        end)
    end)
end)

