-- Kafka rate cap: max_rate_per_partition pauses a partition whose share is
-- used up, so the backlog stays in Kafka (the lag grows) while ember's
-- memory stays flat, and records come at about rate x partitions per
-- second.
--
-- The job lifts librdkafka's prefetch bound (queued.max.messages.kbytes,
-- 32 MiB by default in ember) to 512 MiB, so that only the pause keeps the
-- 40 MB backlog out of memory: without it, ember reaches about 90 MB here.

local driver = require "support.driver"
local kafka_mock = require "support.kafka_mock"


local COUNT_JOB = [[
local ember = require "ember"
local job = ember.job { name = "capped" }

job:kafka { brokers = {{b}}, topic = "backlog", group = "capped", start = "earliest",
            max_rate_per_partition = {{rate}}, ["kafka.queued.max.messages.kbytes"] = 524288,
            {{client}} }
   :foreach_batch(function(records) end)

return job
]]

local PARTITIONS = 16
local RATE = 250                 -- per partition: 4000 records/s in all
local BACKLOG = 200000           -- 200-byte records, ~2.9 MB per partition (the mock keeps 5 MiB)


local function consumed(d)
    local n = 0
    for _, b in ipairs(d:batches("capped")) do
        n = n + b.records
    end
    return n
end


describe("kafka max_rate_per_partition", function()
    local mock, d

    setup(function()
        mock = kafka_mock.start { topics = { "backlog:" .. PARTITIONS } }
        local path = os.tmpname()
        local f = assert(io.open(path, "wb"))
        local pad = string.rep("x", 150)
        for i = 1, BACKLOG do
            f:write(string.format('{"id":%d,"device":"dev-%d","pm25":%d,"pad":"%s"}\n',
                                  i, i % 50, i % 300, pad:sub(1, 200 - 45 - #tostring(i))))
        end
        f:close()
        mock:produce_file("backlog", path)
        os.remove(path)
    end)

    teardown(function()
        if mock then mock:stop() end
    end)

    after_each(function()
        if d then d:stop() end
    end)

    it("keeps the backlog in Kafka: memory flat, records at rate x partitions", function()
        d = driver.new()
        d:write_job("capped.lua", driver.render(COUNT_JOB, {
            b = driver.quote(mock.bootstrap), client = kafka_mock.CLIENT, rate = RATE }))
        d:start()
        d:wait_until(function() return consumed(d) > 0 end, 20, 0.05, "the first records")
        -- Warm-up: the first buckets and allocations settle.
        local t0 = driver.now()
        d:wait_until(function() return driver.now() - t0 >= 1.5 end, 5, 0.1, "warm-up")

        local t1, c1 = driver.now(), consumed(d)
        local rss1 = kafka_mock.rss_kib(d.pid)
        local peak = rss1
        d:wait_until(function()
            peak = math.max(peak, kafka_mock.rss_kib(d.pid) or 0)
            return driver.now() - t1 >= 5
        end, 10, 0.25, "five seconds of measurement")
        local t2, c2 = driver.now(), consumed(d)

        local rate = (c2 - c1) / (t2 - t1)
        local want = RATE * PARTITIONS
        assert(rate > want * 0.7 and rate < want * 1.3,
               string.format("%.0f records/s, expected about %d", rate, want))
        assert(c2 < BACKLOG / 2, c2 .. " of " .. BACKLOG .. " consumed: the backlog left Kafka")
        assert(peak - rss1 < 16 * 1024 and peak < 48 * 1024,
               string.format("RSS went from %d KiB to %d KiB", rss1, peak))
    end)
end)
