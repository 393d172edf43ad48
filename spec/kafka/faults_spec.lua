-- Kafka faults: a broker that goes down mid-stream and comes back, and one
-- that is down when the job starts. librdkafka reconnects by itself; the
-- source logs the outage once, and no record is lost (duplicates are
-- allowed: records in flight when the group rebalanced are read again).

local driver = require "support.driver"
local kafka_mock = require "support.kafka_mock"


-- Appends every record to {{out}}; max_rate_per_partition keeps the stream
-- going long enough to cut it in the middle.
local COPY_JOB = [[
local ember = require "ember"
local job = ember.job { name = "copy" }

job:kafka { brokers = {{b}}, topic = {{topic}}, group = {{group}}, start = "earliest",
            max_rate_per_partition = {{rate}}, {{client}} }
   :foreach_batch(function(records)
       if #records == 0 then return end
       local f = assert(io.open({{out}}, "a"))
       for _, v in ipairs(records) do f:write(v, "\n") end
       f:close()
   end)

return job
]]


local function names(prefix, from, to)
    local t = {}
    for i = from, to do
        t[#t + 1] = prefix .. i
    end
    return t
end


describe("kafka broker faults", function()
    local mock, d

    setup(function()
        mock = kafka_mock.start { topics = { "flow:2", "late:1", "refused:2" } }
    end)

    teardown(function()
        if mock then mock:stop() end
    end)

    after_each(function()
        if d then d:stop() end
        d = nil
    end)

    local function start(vars, env)
        d = driver.new()
        vars.b = driver.quote(mock.bootstrap)
        vars.client = kafka_mock.CLIENT
        vars.out = driver.quote(d:path("out"))
        d:write_job("copy.lua", driver.render(COPY_JOB, vars))
        d:start { env = env }
        return d
    end

    local function wait_all(expected, timeout, what)
        local got
        d:wait_until(function()
            got = d:file_lines("out")
            local missing = kafka_mock.diff(expected, got)
            return #missing == 0, #missing .. " of " .. #expected .. " still missing"
        end, timeout, 0.1, what)
        local missing, invented, dups = kafka_mock.diff(expected, got)
        assert(#missing == 0 and #invented == 0, kafka_mock.describe_diff(missing, invented, dups))
        return got, dups
    end

    it("loses no record when the broker goes down mid-stream and comes back", function()
        local records = names("f", 1, 2000)
        mock:produce("flow", records)
        start { topic = '"flow"', group = '"flow"', rate = 250 }    -- 500 records/s in all
        d:wait_until(function()
            local n = #d:file_lines("out")
            return n >= 300, n .. " records"
        end, 30, 0.05, "the stream to be flowing")
        local before = #d:file_lines("out")
        assert(before < #records, "the stream finished before the outage; nothing was cut")

        local mark = d:log_mark()
        mock:command("down 1")
        d:wait_for_log("cannot reach the brokers", 10, { from = mark })
        -- librdkafka keeps trying (its attempts are in the debug log); the
        -- outage is logged once, not once per attempt.
        d:wait_for_log("librdkafka FAIL: .*Connect to .* failed", 10, { from = mark, count = 3 })
        assert.equal(1, #d:log_lines("cannot reach the brokers", { plain = true, from = mark }))
        mock:command("up 1")

        wait_all(records, 40, "every record after the broker came back")
        d:wait_for_log("the brokers answer again", 20)
    end)

    it("waits for a broker that is down at start and reads once it is up", function()
        mock:command("down 1")
        start { topic = '"late"', group = '"late"', rate = 0 }
        d:wait_for_log("cannot reach the brokers", 15)
        assert.is_true(d:running())
        mock:command("up 1")
        local records = names("l", 1, 100)
        mock:produce("late", records)
        local got, dups = wait_all(records, 40, "the records once the broker is up")
        assert.equal(0, dups)
        assert.equal(100, #got)
    end)

    it("reads a record the receiver refused again, and every one after it once", function()
        -- The 700th record pushed is refused, as when blocks cannot be
        -- allocated: its partition rewinds to it, and what librdkafka had
        -- fetched after it is dropped and read again after the seek.
        local records = names("r", 1, 3000)
        mock:produce("refused", records)
        start({ topic = '"refused"', group = '"refused"', rate = 1000 },
              { EMBER_FAILPOINT = "receiver_refuses:700" })
        local _, dups = wait_all(records, 120, "every record, the refused one too")
        local refused = d:log_lines("receiver refused refused%[%d%] offset %d+ %(out of memory%); reading it again")
        assert.equal(1, #refused, d:log_tail())
        assert.equal(0, dups)
    end)
end)
