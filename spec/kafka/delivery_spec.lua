-- Kafka end to end against librdkafka's mock cluster (tools/kafka-mock),
-- with kcat as the independent client: records go from a topic through a
-- job to another topic exactly; offsets are committed only after a batch's
-- outputs finished, so a driver killed mid-batch reads those records again
-- and a driver stopped after a completed batch does not; a batch that fails
-- for good is read again from Kafka.

local driver = require "support.driver"
local kafka_mock = require "support.kafka_mock"


-- kafka -> map -> to_kafka, with a key computed from the value.
local PIPE_JOB = [[
local ember = require "ember"
local job = ember.job { name = "pipe" }

job:kafka { brokers = {{b}}, topic = "in", group = "pipe", start = "earliest", {{client}} }
   :map(function(v) return "m-" .. v end)
   :to_kafka { brokers = {{b}}, topic = "out",
               key = function(v) return "k" .. tonumber(v:match("%d+")) % 5 end }

return job
]]

-- Writes each batch to {{seen}}, then blocks until the file {{gate}} exists.
local GATE_JOB = [[
local ember = require "ember"
local socket = require "socket"
local job = ember.job { name = "gate" }

local function exists(p)
    local f = io.open(p)
    if f then f:close() end
    return f ~= nil
end

job:kafka { brokers = {{b}}, topic = "acks", group = "acks", start = "earliest", {{client}} }
   :foreach_batch(function(records)
       if #records == 0 then return end
       local f = assert(io.open({{seen}}, "a"))
       for _, v in ipairs(records) do f:write(v, "\n") end
       f:close()
       while not exists({{gate}}) do socket.sleep(0.02) end
   end)

return job
]]

-- Appends every record to {{out}}.
local COPY_JOB = [[
local ember = require "ember"
local job = ember.job { name = "copy" }

job:kafka { brokers = {{b}}, topic = "acks", group = "acks", start = "earliest", {{client}} }
   :foreach_batch(function(records)
       if #records == 0 then return end
       local f = assert(io.open({{out}}, "a"))
       for _, v in ipairs(records) do f:write(v, "\n") end
       f:close()
   end)

return job
]]


-- kafka -> to_kafka: delivery failures are injected by the mock.
local FLAKY_JOB = [[
local ember = require "ember"
local job = ember.job { name = "flaky" }

job:kafka { brokers = {{b}}, topic = "retry", group = "retry", start = "earliest", {{client}} }
   :to_kafka { brokers = {{b}}, topic = "retry_out" }

return job
]]


-- format = "record": every field of a record, one line each.
local RECORD_JOB = [[
local ember = require "ember"
local job = ember.job { name = "fields" }

job:kafka { brokers = {{b}}, topic = "meta", group = "fields", start = "earliest",
            format = "record", {{client}} }
   :foreach_batch(function(records)
       local f = assert(io.open({{out}}, "a"))
       for _, r in ipairs(records) do
           local hs = {}
           for k, v in pairs(r.headers or {}) do hs[#hs + 1] = k .. "=" .. v end
           table.sort(hs)
           f:write(table.concat({ r.topic, r.partition, r.offset, r.key or "-", r.value,
                                  table.concat(hs, ","),
                                  tostring(r.timestamp > 1600000000000) }, "|"), "\n")
       end
       f:close()
   end)

return job
]]


-- kafka (format = "json") -> map -> to_kafka; broken JSON dead-lettered.
local JSON_JOB = [[
local ember = require "ember"
local job = ember.job { name = "json", on_error = "dead_letter" }

job:kafka { brokers = {{b}}, topic = "json_in", group = "json", start = "earliest", format = "json",
            {{client}} }
   :map(function(p) return p.device .. "=" .. p.pm25 * 2 end)
   :to_kafka { brokers = {{b}}, topic = "json_out" }

return job
]]

-- kafka -> to_kafka, untouched.
local COPY_TO_KAFKA_JOB = [[
local ember = require "ember"
local job = ember.job { name = "relay" }

job:kafka { brokers = {{b}}, topic = "relay_in", group = "relay", start = "earliest", {{client}} }
   :to_kafka { brokers = {{b}}, topic = "relay_out" }

return job
]]


local function names(prefix, from, to)
    local t = {}
    for i = from, to do
        t[#t + 1] = prefix .. i
    end
    return t
end


local function assert_same_set(expected, got)
    local missing, invented, dups = kafka_mock.diff(expected, got)
    assert(#missing == 0 and #invented == 0 and dups == 0,
           kafka_mock.describe_diff(missing, invented, dups))
    assert.equal(#expected, #got)
end


describe("kafka source and sink", function()
    local mock, d

    setup(function()
        mock = kafka_mock.start { topics = { "in:3", "out:2", "acks:2", "retry:2", "retry_out:1",
                                              "meta:1", "relay_in:2", "relay_out:2", "json_in:2",
                                              "json_out:1" } }
    end)

    teardown(function()
        if mock then mock:stop() end
    end)

    after_each(function()
        if d then d:stop() end
        d = nil
    end)

    local function start(template, vars, conf)
        local dd = driver.new()
        vars.b = driver.quote(mock.bootstrap)
        vars.client = kafka_mock.CLIENT
        vars.out = driver.quote(dd:path("out"))
        dd:write_job("job.lua", driver.render(template, vars))
        dd:start { conf = driver.conf(conf) }
        return dd
    end

    it("delivers exactly the records produced, through a map, to another topic, batches "
       .. "larger than the sink's chunk too", function()
        local input, expected = {}, {}
        for i = 1, 30000 do
            input[i] = { key = "in" .. i % 3, value = "r" .. i }
            expected[i] = "m-r" .. i
        end
        mock:produce("in", input)
        d = start(PIPE_JOB, {}, { ["streaming.batchInterval"] = "1s" })
        d:wait_for_log("assigned in%[", 20)
        d:wait_until(function()
            local n = #mock:values("out")
            return n >= 30000, n .. " records on topic out"
        end, 30, 0.2, "30000 records on topic out")
        local biggest = 0
        for _, b in ipairs(d:batches("pipe")) do
            biggest = math.max(biggest, b.records)
        end
        assert.is_true(biggest > 8192, "the largest batch held " .. biggest .. " records")
        -- Stop gracefully, so every batch is done: then the topic is final.
        d:signal("TERM")
        assert.equal(0, d:wait_exit(20))
        local out = mock:consume("out")
        local values = {}
        for i, r in ipairs(out) do
            values[i] = r.value
            assert.equal("k" .. tonumber(r.value:match("%d+")) % 5, r.key)
        end
        assert_same_set(expected, values)
    end)

    it("hands a format = \"json\" job each record decoded, dead-letters broken JSON with its "
       .. "text, and commits past both", function()
        local input, expected = {}, {}
        for i = 1, 200 do
            input[#input + 1] = { value = string.format('{"device":"d%d","pm25":%d.5}', i, i) }
            expected[i] = string.format("d%d=%d", i, 2 * i + 1)
        end
        input[#input + 1] = { value = '{"device":"broken","pm25":' }
        input[#input + 1] = { value = "not json" }
        mock:produce("json_in", input)
        d = start(JSON_JOB, {})
        d:wait_until(function()
            local n = #mock:values("json_out")
            return n >= 200, n .. " records on topic json_out"
        end, 30, 0.2, "200 records on topic json_out")
        local dead = d:wait_until(function()
            local text = driver.read_file(d.checkpoint_dir .. "/json/dead_letter.jsonl")
            local n = text and select(2, text:gsub("\n", "")) or 0
            return n == 2 and text, n .. " dead letters"
        end, 10, 0.1, "two dead letters")
        assert.truthy(dead:find('"record":"{\\"device\\":\\"broken\\",\\"pm25\\":"', 1, true), dead)
        assert.truthy(dead:find('"error":"json: unexpected end at byte 27"', 1, true), dead)
        assert.truthy(dead:find('"record":"not json"', 1, true), dead)
        d:signal("TERM")
        assert.equal(0, d:wait_exit(20))
        assert_same_set(expected, mock:values("json_out"))
        -- Nothing is read again: every offset, the broken records' too, was committed.
        local again = start(JSON_JOB, {})
        finally(function() again:stop() end)
        again:wait_for_log("assigned json_in%[", 20)
        local n0 = #again:batches("json")
        again:wait_until(function() return #again:batches("json") >= n0 + 3 end, 10, 0.05,
                         "three batches after the assignment")
        for _, b in ipairs(again:batches("json")) do
            assert.equal(0, b.records, b.line)
        end
        again:signal("TERM")
        assert.equal(0, again:wait_exit(20))
        assert.equal(200, #mock:values("json_out"))
    end)

    it("commits offsets only after the batch's outputs finished", function()
        local first = names("a", 1, 50)
        mock:produce("acks", first)

        -- 1. A batch is in flight (its output blocks) when the driver is killed.
        local gated = driver.new()
        d = gated
        local seen = gated:path("seen")
        gated:write_job("gate.lua", driver.render(GATE_JOB, {
            b = driver.quote(mock.bootstrap), client = kafka_mock.CLIENT,
            seen = driver.quote(seen), gate = driver.quote(gated:path("gate")) }))
        gated:start()
        gated:wait_until(function()
            local n = #gated:file_lines("seen")
            return n > 0, n .. " records in the blocked batch"
        end, 30, 0.05, "a batch to reach the blocked output")
        gated:signal("KILL")
        gated:wait_exit(10)
        gated:stop()

        -- 2. Restarted, the group reads every one of them again.
        d = start(COPY_JOB, {})
        local out = d:path("out")
        local copy = d
        copy:wait_until(function()
            local n = #copy:file_lines("out")
            return n >= 50, n .. " records"
        end, 30, 0.05, "the 50 records again after the kill")
        -- A graceful stop finishes and commits what it took.
        copy:signal("TERM")
        assert.equal(0, copy:wait_exit(20))
        assert_same_set(first, copy:file_lines(out))
        copy:stop()

        -- 3. After a completed batch and a restart, only new records arrive.
        d = start(COPY_JOB, {})
        local again = d
        local second = names("b", 1, 20)
        again:wait_for_log("assigned acks%[", 20)
        mock:produce("acks", second)
        again:wait_until(function()
            local n = #again:file_lines("out")
            return n >= 20, n .. " records"
        end, 30, 0.05, "the 20 new records")
        again:signal("TERM")
        assert.equal(0, again:wait_exit(20))
        assert_same_set(second, again:file_lines("out"))
    end)

    it("runs a batch whose sink failed again until it lands, and commits after", function()
        local records = names("t", 1, 200)
        mock:produce("retry", records)
        -- The next Produce request is refused for good. With no retries
        -- allowed before the job is reported blocked, the batch is held and
        -- run again (with backoff) until its records land: no hole, and
        -- nothing committed before they did.
        mock:command("errors 0 29 1")
        d = start(FLAKY_JOB, {}, { ["streaming.batch.maxRetries"] = 0 })
        d:wait_for_log("the job is blocked", 30)
        d:wait_for_log("went through after %d+ attempts; the job runs again", 30)
        d:wait_until(function()
            local missing = kafka_mock.diff(records, mock:values("retry_out"))
            return #missing == 0, #missing .. " records missing"
        end, 30, 0.2, "every record on retry_out after the failure")
        d:signal("TERM")
        assert.equal(0, d:wait_exit(20))
        local missing, invented, dups = kafka_mock.diff(records, mock:values("retry_out"))
        assert(#missing == 0 and #invented == 0, kafka_mock.describe_diff(missing, invented, dups))
        local before = #mock:values("retry_out")
        d:stop()

        -- What was committed after the seek is right: a restart reads only new records.
        d = start(FLAKY_JOB, {})
        local restarted = d
        restarted:wait_for_log("assigned retry%[", 20)
        mock:produce("retry", { "new1", "new2", "new3" })
        restarted:wait_until(function()
            local n = #mock:values("retry_out")
            return n >= before + 3, n .. " records on retry_out"
        end, 30, 0.2, "the three new records")
        restarted:signal("TERM")
        assert.equal(0, restarted:wait_exit(20))
        local out = mock:values("retry_out")
        assert.equal(before + 3, #out)
        missing = kafka_mock.diff({ "new1", "new2", "new3" }, out)
        assert.equal(0, #missing)
    end)

    it("gives a job each record's topic, partition, offset, key, headers and timestamp", function()
        mock:produce("meta", { { key = "k1", value = "one" }, { key = "k2", value = "two" } },
                     { headers = { "trace=abc", "origin=spec" } })
        mock:produce("meta", { "three" })
        d = start(RECORD_JOB, {})
        local fields = d
        fields:wait_until(function()
            local n = #fields:file_lines("out")
            return n >= 3, n .. " records"
        end, 30, 0.05, "the three records")
        assert.same({
            "meta|0|0|k1|one|origin=spec,trace=abc|true",
            "meta|0|1|k2|two|origin=spec,trace=abc|true",
            "meta|0|2|-|three||true",
        }, fields:file_lines("out"))
    end)

    it("fails a batch whose Kafka delivery failed, and delivers it on the retry", function()
        local records = names("p", 1, 300)
        mock:produce("relay_in", records)
        -- The next Produce request the cluster gets is refused for good
        -- (TOPIC_AUTHORIZATION_FAILED): the first batch's delivery reports fail.
        mock:command("errors 0 29 1")
        d = start(COPY_TO_KAFKA_JOB, {})
        d:wait_for_log("batch %d+ failed %(to_kafka", 30)
        d:wait_until(function()
            local missing = kafka_mock.diff(records, mock:values("relay_out"))
            return #missing == 0, #missing .. " records missing"
        end, 30, 0.2, "every record on relay_out after the retry")
        local missing, invented, dups = kafka_mock.diff(records, mock:values("relay_out"))
        assert(#missing == 0 and #invented == 0, kafka_mock.describe_diff(missing, invented, dups))
        assert.truthy(d:log():find("Broker: Topic authorization failed", 1, true))
    end)
end)
