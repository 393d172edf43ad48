-- Receiver lag where the broker tells it: a Kafka source's consumer lag per
-- partition (high watermark minus committed offset) in /api/v1/receivers
-- and /metrics, against librdkafka's mock cluster with kcat producing.

local driver = require "support.driver"
local http = require "support.http"
local kafka_mock = require "support.kafka_mock"
local cjson = require "cjson"


local SLOW_JOB = [[
local ember = require "ember"
local job = ember.job { name = "lagged", batch_interval = "200ms" }
job:kafka { brokers = {{b}}, topic = "lagged", group = "lagged", start = "earliest",
            max_rate = 150, {{client}} }
   :foreach_batch(function(records) end)
return job
]]

local RECORDS = 900


describe("receiver lag", function()
    local mock, d

    setup(function()
        mock = kafka_mock.start { topics = { "lagged:2" } }
        local records = {}
        for i = 1, RECORDS do
            records[i] = "record " .. i
        end
        mock:produce("lagged", records)
    end)

    teardown(function()
        if d then d:stop() end
        if mock then mock:stop() end
    end)

    it("reports a Kafka source's consumer lag per partition until it is caught up", function()
        d = driver.new()
        d:write_job("lagged.lua", driver.render(SLOW_JOB, {
            b = driver.quote(mock.bootstrap), client = kafka_mock.CLIENT }))
        d:start()
        local port = d:http_port()
        -- While the rate cap holds it back: a lag, and the watermarks add up
        -- to every record produced.
        local rx = d:wait_until(function()
            local r = http.json(port, "/api/v1/receivers")[1]
            if type(r.lagDetail) ~= "table" or #r.lagDetail ~= 2 then
                return false, cjson.encode(r)
            end
            local high = r.lagDetail[1].highWatermark + r.lagDetail[2].highWatermark
            return high == RECORDS and r.lag > 0 and r, cjson.encode(r)
        end, 30, 0.1, "a lag with both partitions' watermarks")
        local sum = 0
        for _, p in ipairs(rx.lagDetail) do
            assert.equal("lagged", p.topic)
            assert.is_true(p.lag >= 0 and p.lag <= p.highWatermark)
            sum = sum + p.lag
        end
        assert.equal(rx.lag, sum)
        local code, body = http.request(port, "GET", "/metrics")
        assert.equal(200, code)
        assert.truthy(body:find('ember_receiver_lag_records{job="lagged",source="1",kind="kafka"} ', 1, true))

        -- Caught up: every record processed and committed, the lag 0.
        d:wait_until(function()
            local r = http.json(port, "/api/v1/receivers")[1]
            local j = http.json(port, "/api/v1/jobs/lagged")
            return r.lag == 0 and j.numProcessedRecords == RECORDS, cjson.encode(r)
        end, 60, 0.1, "lag 0 with every record processed")
    end)
end)
