-- Kafka source and sink options: checked when the job loads (`ember check`),
-- each error naming the script line and the option at fault. No broker needed.

local driver = require "support.driver"


local JOB = [[
local ember = require "ember"
local job = ember.job { name = "opts" }
job:kafka { {{options}} }
   :print()
return job
]]


local SINK_JOB = [[
local ember = require "ember"
local job = ember.job { name = "opts" }
job:generator { kind = "sequence" }
   :to_kafka { {{options}} }
return job
]]


describe("kafka source options", function()
    local d

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    local function check(options)
        local path = d:write_job("opts.lua", driver.render(JOB, { options = options }))
        local code, out, err = d:exec({ "check", path }, 10)
        return code, out .. err, path
    end

    local BASE = 'brokers = "127.0.0.1:1", topic = "in", group = "g"'

    it("accepts the documented options and librdkafka properties as kafka.<property>", function()
        local code, out = check(BASE .. ', start = "earliest", max_rate_per_partition = 100, '
                                .. '["kafka.fetch.wait.max.ms"] = 10, ["kafka.client.rack"] = "r1"')
        assert.equal(0, code, out)
        assert.truthy(out:find("kafka{", 1, true), out)
    end)

    for _, case in ipairs {
        { 'topic = "in", group = "g"', "option 'brokers' is required" },
        { 'brokers = "127.0.0.1:1", group = "g"', "option 'topic' is required" },
        { 'brokers = "127.0.0.1:1", topic = "in"', "option 'group' is required" },
        { BASE .. ', start = "middle"', "option 'start' = 'middle' is not earliest or latest" },
        { BASE .. ', grup = "x"', "unknown option 'grup'" },
        { BASE .. ', max_rate_per_partition = "fast"',
          "option 'max_rate_per_partition' = 'fast'" },
        { BASE .. ', ["kafka.no.such.property"] = 1',
          "option 'kafka.no.such.property' = '1': No such configuration property" },
        { BASE .. ', ["kafka.fetch.wait.max.ms"] = "soon"',
          "option 'kafka.fetch.wait.max.ms' = 'soon'" },
        { BASE .. ', ["kafka.enable.auto.commit"] = true',
          "option 'kafka.enable.auto.commit' cannot be set: ember commits offsets itself" },
        { BASE .. ', ["kafka.group.id"] = "x"',
          "option 'kafka.group.id' is set by ember; use 'group'" },
    } do
        it("refuses " .. case[1], function()
            local code, out, path = check(case[1])
            assert.are_not.equal(0, code)
            assert.truthy(out:find(path .. ":3: kafka source: " .. case[2], 1, true), out)
        end)
    end

    it("accepts a sink with brokers, topic, key and value", function()
        local path = d:write_job("sink.lua", driver.render(SINK_JOB, { options =
            'brokers = "127.0.0.1:1", topic = "out", key = tostring, value = tostring' }))
        local code, out, err = d:exec({ "check", path }, 10)
        assert.equal(0, code, out .. err)
        assert.truthy(out:find("to_kafka", 1, true), out)
    end)

    for _, case in ipairs {
        { 'topic = "out"', "option 'brokers' is required" },
        { 'brokers = "127.0.0.1:1"', "option 'topic' must be a topic name" },
        { 'brokers = "127.0.0.1:1", topic = "a b"', "option 'topic' must be a topic name" },
        { 'brokers = "127.0.0.1:1", topic = "out", key = "device"',
          "option 'key' must be a function(record)" },
        { 'brokers = "127.0.0.1:1", topic = "out", partition = 1', "unknown option 'partition'" },
    } do
        it("refuses a sink with " .. case[1], function()
            local path = d:write_job("sink.lua", driver.render(SINK_JOB, { options = case[1] }))
            local code, out, err = d:exec({ "check", path }, 10)
            assert.are_not.equal(0, code)
            local text = out .. err
            assert.truthy(text:find(path .. ":", 1, true), text)     -- the script's line
            assert.truthy(text:find("bad argument #1 to 'to_kafka' (" .. case[2], 1, true), text)
        end)
    end
end)
