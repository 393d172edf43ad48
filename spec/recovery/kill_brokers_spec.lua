-- Recovery: kill -9 under load, at random moments, with the broker sources
-- (spec/recovery/kill_spec.lua does the socket source with the write-ahead
-- log). The broker keeps every record until ember acknowledges it (a
-- RabbitMQ ack, a Kafka commit), and ember acknowledges a batch only after
-- its output finished: so every record published comes out at least once,
-- and what comes out twice is what a kill caught between a batch's output
-- and its acknowledgement — at most one batch per kill. A batch holds at
-- most max_rate x batch interval plus one block's worth of records
-- (docs/semantics.md), which bounds the duplicates of each kill.
--
-- Each run of ember appends to a file of its own (out.<run>), so that the
-- duplicates can be put down to the kill before the run that wrote them
-- again. A kill -9 may tear the last write of a run: a last line without
-- its "\n" is not a record (its batch was not acknowledged; it comes again).
-- EMBER_SPEC_SEED reruns the same kill moments.

local driver = require "support.driver"
local rabbit = require "support.rabbitmq_server"
local kafka_mock = require "support.kafka_mock"

local now = driver.now
local str_format = string.format


local RATE = 5000                       -- max_rate of the source, records/s
local BATCH_S, BLOCK_S = 0.2, 0.1       -- batch interval, streaming.blockInterval
-- One batch's worth: rate x interval plus one block.
local BATCH_BOUND = RATE * BATCH_S + RATE * BLOCK_S


-- Appends the records of each non-empty batch to out.<run>, where <run> is
-- read from the file "run" at load, one line each (a RabbitMQ body keeps the
-- "\n" amqp-publish -l gives it). A second output then takes 80 ms, like a
-- slow sink: a kill falls between a batch's first output and its
-- acknowledgement often enough that duplicates do happen.
local JOB = [[
local ember = require "ember"
local socket = require "socket"
local job = ember.job { name = {{name}}, batch_interval = "200ms" }

local run = assert(io.open({{dir}} .. "/run")):read("*l")
local out = {{dir}} .. "/out." .. run

local records = job:{{source}} { {{options}}, max_rate = {{rate}} }

records:foreach_batch(function(batch)
    if #batch == 0 then
        return
    end
    local t = {}
    for i, v in ipairs(batch) do
        t[i] = v:gsub("\n$", "")
    end
    local f = assert(io.open(out, "a"))
    f:write(table.concat(t, "\n"), "\n")
    f:close()
end)

records:foreach_batch(function(batch)
    if #batch > 0 then
        socket.sleep(0.08)
    end
end)

return job
]]


-- "<prefix>000001" ... : fixed width, so a torn line never reads as a record.
local function numbers(prefix, n)
    local t = {}
    for i = 1, n do
        t[i] = str_format("%s%06d", prefix, i)
    end
    return t
end


-- The complete lines of a run's output, and its torn last line (or nil).
local function run_output(d, run)
    local s = driver.read_file(d:path("out." .. run)) or ""
    local lines = {}
    for line in s:gmatch("([^\n]*)\n") do
        lines[#lines + 1] = line
    end
    return lines, s:match("([^\n]+)$")
end


-- What the runs' outputs say: every record must be there, nothing
-- invented; per run, the records an earlier run (or the same run) had
-- already written are its duplicates.
local function tally(d, runs, published)
    local want = {}
    for _, v in ipairs(published) do
        want[v] = true
    end
    local seen, invented, torn = {}, {}, {}
    local per_run, total = {}, 0
    for run = 1, runs do
        local lines, tail = run_output(d, run)
        local dups = 0
        for _, v in ipairs(lines) do
            if not want[v] then
                invented[#invented + 1] = v
            elseif seen[v] then
                dups = dups + 1
            end
            seen[v] = true
        end
        per_run[run] = { lines = #lines, dups = dups }
        total = total + dups
        if tail then
            torn[#torn + 1] = run .. ": " .. tail
        end
    end
    local missing = {}
    for _, v in ipairs(published) do
        if not seen[v] then
            missing[#missing + 1] = v
        end
    end
    return { missing = missing, invented = invented, torn = torn, per_run = per_run,
             dups = total }
end


-- The biggest batch of a run, from the debug log's batch lines.
local function biggest_batch(d, job)
    local n = 0
    for _, b in ipairs(d:batches(job)) do
        n = math.max(n, b.records)
    end
    return n
end


-- Runs `kills` cycles of: start, wait for the run's first record out, run a
-- random 0.3-1.2 s more, kill -9. Then a last run that takes every record
-- (done(d) says when) and stops gracefully. Returns the number of runs and
-- the biggest batch of each run.
local function kill_loop(d, job, kills, conf, first_timeout, done)
    local biggest = {}
    for run = 1, kills + 1 do
        driver.write_file(d:path("run"), run .. "\n")
        d:start { conf = conf }
        d:wait_until(function()
            if not d:running() then
                error("ember exited (status " .. tostring(d.status) .. ") in run " .. run, 0)
            end
            return #run_output(d, run) > 0
        end, first_timeout, 0.02, "run " .. run .. "'s first records in out." .. run)
        if run <= kills then
            local kill_at = now() + 0.3 + math.random() * 0.9
            d:wait_until(function()
                if not d:running() then
                    error("ember exited (status " .. tostring(d.status) .. ") in run " .. run, 0)
                end
                return now() >= kill_at
            end, 5, 0.01, "the moment of kill " .. run)
            d:signal("KILL")
            assert.equal(128 + 9, d:wait_exit(10))
        else
            d:wait_until(done, 60, 0.1, "every record out in the last run")
            d:signal("TERM")
            assert.equal(0, d:wait_exit(20))
        end
        biggest[run] = biggest_batch(d, job)
    end
    return kills + 1, biggest
end


-- The checks shared by both sources, and the line the run prints.
local function check(what, ctx, r, kills, batches)
    local per, biggest = {}, math.max(unpack(batches))
    for run = 2, #r.per_run do
        per[#per + 1] = r.per_run[run].dups
    end
    io.stderr:write(str_format(
        "\n[kill -9 %s] %s: %d kills, %d duplicates in all; after each kill: %s "
        .. "(bound %d a kill); biggest batch of each run: %s; %d torn last lines\n", what, ctx,
        kills, r.dups, table.concat(per, " "), BATCH_BOUND, table.concat(batches, " "),
        #r.torn))

    assert(#r.missing == 0, str_format("%s: %d records lost, first %s", ctx, #r.missing,
                                       tostring(r.missing[1])))
    assert(#r.invented == 0, str_format("%s: %d lines nobody published, first %s", ctx,
                                        #r.invented, tostring(r.invented[1])))
    -- The premise of the bound: no batch was bigger than one batch's worth.
    assert(biggest <= BATCH_BOUND, str_format("%s: a batch of %d records, above the %d a batch "
                                              .. "may hold", ctx, biggest, BATCH_BOUND))
    assert.equal(0, r.per_run[1].dups, ctx .. ": duplicates before any kill")
    for run = 2, #r.per_run do
        assert(r.per_run[run].dups <= BATCH_BOUND, str_format(
            "%s: the run after kill %d wrote %d records again, more than one batch (%d)", ctx,
            run - 1, r.per_run[run].dups, BATCH_BOUND))
    end
    assert(r.dups <= kills * BATCH_BOUND, str_format("%s: %d duplicates, more than one batch "
                                                     .. "(%d) per kill", ctx, r.dups, BATCH_BOUND))
    -- Every kill came under load: the last run still had records to take.
    local last = r.per_run[#r.per_run]
    assert(last.lines > last.dups, ctx .. ": the queue was drained before the last kill")
    -- Only a killed run's last write may be torn.
    for _, t in ipairs(r.torn) do
        assert(tonumber(t:match("^(%d+):")) <= kills, ctx .. ": torn line in the last run: " .. t)
    end
end


local function seeded()
    local seed = tonumber(os.getenv("EMBER_SPEC_SEED")) or os.time()
    math.randomseed(seed)
    return seed, str_format("seed %d (EMBER_SPEC_SEED reruns it)", seed)
end


describe("kill -9 under load with a RabbitMQ source", function()
    local KILLS = 6
    local COUNT = 40000
    local srv, d

    setup(function()
        srv = rabbit.start()
    end)

    teardown(function()
        if srv then
            srv:stop()
        end
    end)

    after_each(function()
        if d then
            d:stop()
        end
    end)

    it("delivers every published message at least once and repeats at most one batch per kill, "
       .. "over " .. KILLS .. " kills", function()
        local _, ctx = seeded()
        local published = numbers("r", COUNT)
        srv:declare("kill_in")
        srv:publish("kill_in", published)
        d = driver.new()
        d:write_job("kill_rabbitmq", driver.render(JOB, {
            name = '"kill_rabbitmq"', dir = driver.quote(d:path()), source = "rabbitmq",
            options = "url = " .. driver.quote(srv.url) .. ', queue = "kill_in"', rate = RATE,
        }))
        local runs, biggest = kill_loop(d, "kill_rabbitmq", KILLS, driver.conf(), 15, function()
            local q = srv:queue("kill_in")
            return q and q.ready == 0 and q.unacked == 0,
                   q and str_format("ready %d, unacked %d", q.ready, q.unacked)
        end)
        -- Stopped gracefully: everything it took is acknowledged.
        assert.same({ ready = 0, unacked = 0 }, srv:queue("kill_in"))
        check("rabbitmq", ctx, tally(d, runs, published), KILLS, biggest)
    end)
end)


describe("kill -9 under load with a Kafka source", function()
    local KILLS = 4
    local COUNT = 40000
    local mock, d

    setup(function()
        mock = kafka_mock.start { topics = { "kill_in:4" } }
    end)

    teardown(function()
        if mock then
            mock:stop()
        end
    end)

    after_each(function()
        if d then
            d:stop()
        end
    end)

    it("delivers every produced record at least once and repeats at most one batch per kill, "
       .. "over " .. KILLS .. " kills", function()
        local _, ctx = seeded()
        local published = numbers("k", COUNT)
        mock:produce("kill_in", published)
        d = driver.new()
        d:write_job("kill_kafka", driver.render(JOB, {
            name = '"kill_kafka"', dir = driver.quote(d:path()), source = "kafka",
            options = "brokers = " .. driver.quote(mock.bootstrap) .. ', topic = "kill_in", '
                      .. 'group = "kill", start = "earliest", ' .. kafka_mock.CLIENT,
            rate = RATE,
        }))
        -- A group join takes about 3 s against the mock, more while the
        -- killed member's session has not expired.
        local runs, biggest = kill_loop(d, "kill_kafka", KILLS, driver.conf(), 30, function()
            local r = tally(d, KILLS + 1, published)
            return #r.missing == 0, #r.missing .. " records missing"
        end)
        check("kafka", ctx, tally(d, runs, published), KILLS, biggest)
    end)
end)
