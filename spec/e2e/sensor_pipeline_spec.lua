-- The sensor pipeline (jobs/sensor_pipeline.lua, the real file, copied into
-- the driver's jobs folder) against all three real servers: readings go
-- into the Kafka mock's topic "datapoints" with kcat, the latest reading of
-- each device is read back from redis-server with redis-cli, and the alerts
-- from rabbitmq-server's "amq.topic" with amqp-consume. The job's settings
-- reach it as in production, through environment variables (driver:start's
-- env option).
--
-- Every Kafka-side test uses a mock of its own: the 2.0.2 mock lets a group
-- that a member left gracefully rebalance only after that member's session
-- timeout (45 s by default, which the job keeps), so a second run of the
-- job on the same mock would wait that long to be assigned.

local driver = require "support.driver"
local kafka_mock = require "support.kafka_mock"
local redis_server = require "support.redis_server"
local rabbit = require "support.rabbitmq_server"
local cjson = require "cjson"
local psignal = require "posix.signal"
local pstdlib = require "posix.stdlib"

local str_format = string.format


local JOB_FILE = driver.root .. "/jobs/sensor_pipeline.lua"
local THRESHOLD = 80                    -- EMBER_PM25_ALERT: the default is 100


-- Readings in production order; keyed by device, so that each device's
-- readings share a partition and arrive in order. The malformed ones come
-- after the good ones of the same device: dropping them must leave the
-- latest good reading in place.
local READINGS = {
    { key = "kitchen", value = '{"device":"kitchen","pm25":12.5,"co2":410,"ts":1700000000001}' },
    { key = "garage", value = '{"device":"garage","pm25":150.25,"co2":900,"ts":1700000000002}' },
    { key = "kitchen", value = '{"device":"kitchen","pm25":95,"co2":600,"ts":1700000000003}' },
    { key = "porch", value = '{"device":"porch","pm25":300,"co2":1000,"ts":1700000000004}' },
    { key = "attic", value = '{"device":"attic","pm25":3}' },
    { key = "kitchen", value = '{"device":"kitchen","pm25":40,"co2":450,"ts":1700000000005}' },
    -- exactly at the threshold: not above it, no alert
    { key = "garage", value = '{"device":"garage","pm25":80,"ts":1700000000006}' },
    -- malformed
    { key = "kitchen", value = '{"device":"kitchen","pm25":"999","ts":1700000000007}' },
    { key = "porch", value = '{"device":"porch","pm25":500,"co2":1' },
    { key = "garage", value = '{"device":"garage","pm25":null,"ts":1700000000008}' },
    { key = "ghost", value = '{"device":"ghost","co2":500}' },
    { key = "ghost", value = '{"device":7,"pm25":500}' },
    { key = "ghost", value = '{"pm25":500}' },
    { key = "ghost", value = "{not json" },
    { key = "ghost", value = "42" },
    { key = "ghost", value = '"pm25 above 100"' },
    { key = "ghost", value = "[1,2,3]" },
    { key = "ghost", value = "null" },
}

-- What Redis must hold afterwards: the latest well-formed reading per device.
local LATEST = {
    ["sensor:kitchen"] = { pm25 = "40", co2 = "450", ts = "1700000000005" },
    ["sensor:garage"] = { pm25 = "80", co2 = "", ts = "1700000000006" },
    ["sensor:porch"] = { pm25 = "300", co2 = "1000", ts = "1700000000004" },
    ["sensor:attic"] = { pm25 = "3", co2 = "", ts = "" },
}

-- The alerts: the readings above the threshold, per device.
local ALERTS = {
    kitchen = { { device = "kitchen", pm25 = 95, ts = 1700000000003 } },
    garage = { { device = "garage", pm25 = 150.25, ts = 1700000000002 } },
    porch = { { device = "porch", pm25 = 300, ts = 1700000000004 } },
}
local ALERT_COUNT = 3

-- Devices with a queue bound to their exact routing key, "pm25.<device>":
-- a message there had that key. Those of attic and ghost must stay empty.
local DEVICES = { "kitchen", "garage", "porch", "attic", "ghost" }


-- The complete lines of a file ("" when missing): a line still being
-- written, without its "\n", is not counted yet.
local function complete_lines(path)
    local t = {}
    for line in (driver.read_file(path) or ""):gmatch("([^\n]*)\n") do
        t[#t + 1] = line
    end
    return t
end


---------------------------------------------------------------------------
-- amqp-consume running in the background on a queue bound to amq.topic
-- with a key, appending each message's body and a line end to a file.
-- (amqp-tools bind a queue only as amqp-consume does, and the queue it
-- declares goes away with it: so it runs as long as the spec needs it.)

local Consumer = {}
Consumer.__index = Consumer

local function consumer(srv, dir, queue, key)
    local q = rabbit.shell_quote
    local path = dir .. "/" .. queue
    local p = assert(io.popen("echo $$; exec timeout 300 amqp-consume --url=" .. q(srv.url)
                              .. " -q " .. q(queue) .. " -e amq.topic -r " .. q(key)
                              .. " -- sh -c 'cat; echo' > " .. q(path) .. " 2> "
                              .. q(path .. ".err")))
    local self = setmetatable({ p = p, pid = tonumber(p:read("*l")), path = path, queue = queue,
                                srv = srv }, Consumer)
    assert(self.pid, "amqp-consume on " .. queue .. " did not start")
    driver.wait_until(function()
        if not psignal.kill(self.pid, 0) then
            error("amqp-consume on " .. queue .. " exited: "
                  .. tostring(driver.read_file(path .. ".err")), 0)
        end
        for _, line in ipairs(driver.lines(srv:ctl("list_queues name consumers"))) do
            if line == queue .. "\t1" then
                return true
            end
        end
        return false
    end, 20, 0.05, "amqp-consume consuming " .. queue)
    return self
end


-- The bodies taken so far after the first `from` (default 0), decoded from
-- JSON (a body that is no JSON fails), in arrival order.
function Consumer:bodies(from)
    local out = {}
    for i, line in ipairs(complete_lines(self.path)) do
        if i > (from or 0) then
            out[#out + 1] = cjson.decode(line)
        end
    end
    return out
end


function Consumer:count()
    return #complete_lines(self.path)
end


-- Waits until the consumer has taken n bodies after the first `from` and
-- its queue holds nothing more (nothing ready, nothing unacked); returns
-- those bodies.
function Consumer:wait(n, from, timeout)
    from = from or 0
    return driver.wait_until(function()
        local got = self:count() - from
        local q = self.srv:queue(self.queue)
        if got >= n and q and q.ready == 0 and q.unacked == 0 then
            return self:bodies(from)
        end
        return false, str_format("%d bodies; queue %s", got,
                                 q and str_format("ready %d, unacked %d", q.ready, q.unacked)
                                   or "missing")
    end, timeout or 20, 0.1, n .. " alerts taken from " .. self.queue)
end


-- Ends amqp-consume (its queue goes with it).
function Consumer:close()
    if self.pid then
        psignal.kill(self.pid, psignal.SIGTERM)
        self.p:close()
        self.pid = nil
    end
end

---------------------------------------------------------------------------


local function by_device(a, b)
    return a.device < b.device
end


-- The hash at key as { field = value }, read with redis-cli.
local function hash(srv, key)
    local lines = driver.lines(srv:cli("HGETALL", key))
    local t = {}
    for i = 1, #lines - 1, 2 do
        t[lines[i]] = lines[i + 1]
    end
    return t
end


-- Every sensor:* hash.
local function sensors(srv)
    local t = {}
    for _, key in ipairs(srv:lines("KEYS", "sensor:*")) do
        t[key] = hash(srv, key)
    end
    return t
end


-- Records the job took from Kafka, from the batch lines of the debug log.
local function consumed(d)
    local n = 0
    for _, b in ipairs(d:batches("sensor_pipeline")) do
        n = n + b.records
    end
    return n
end


local function copy_job(d)
    d:write_job("sensor_pipeline.lua", assert(driver.read_file(JOB_FILE)))
end


describe("the sensor pipeline job", function()
    local redis, rmq, tmp, d
    local alerts, per_device = nil, {}

    setup(function()
        redis = redis_server.start()
        rmq = rabbit.start()
        tmp = assert(pstdlib.mkdtemp((os.getenv("TMPDIR") or "/tmp") .. "/ember-alerts-XXXXXX"))
        alerts = consumer(rmq, tmp, "alerts", "pm25.#")
        for _, device in ipairs(DEVICES) do
            per_device[device] = consumer(rmq, tmp, "alerts." .. device, "pm25." .. device)
        end
    end)

    teardown(function()
        for _, c in pairs(per_device) do
            c:close()
        end
        if alerts then alerts:close() end
        if tmp then os.execute("rm -rf " .. rabbit.shell_quote(tmp)) end
        if redis then redis:stop() end
        if rmq then rmq:stop() end
    end)

    after_each(function()
        if d then d:stop() end
        d = nil
    end)

    local function env(kafka)
        return {
            EMBER_KAFKA_BROKERS = kafka.bootstrap,
            EMBER_REDIS_URL = redis.url,
            EMBER_RABBITMQ_URL = rmq.url,
            EMBER_PM25_ALERT = tostring(THRESHOLD),
        }
    end

    -- A Kafka mock with topic datapoints, stopped when the test ends.
    local function kafka_for_test(partitions)
        local kafka = kafka_mock.start { topics = { "datapoints:" .. partitions } }
        finally(function() kafka:stop() end)
        return kafka
    end

    it("keeps the latest well-formed reading of each device in Redis and sends an alert to "
       .. "RabbitMQ for each reading above the threshold, and nothing for malformed ones",
       function()
        local kafka = kafka_for_test(3)
        redis:cli("FLUSHALL")
        local mark = {}
        for device, c in pairs(per_device) do
            mark[device] = c:count()
        end
        local alerts_mark = alerts:count()
        kafka:produce("datapoints", READINGS)
        d = driver.new()
        copy_job(d)
        d:start { env = env(kafka) }
        d:wait_for_log("assigned datapoints%[", 30)
        d:wait_until(function()
            local n = consumed(d)
            return n >= #READINGS, n .. " of " .. #READINGS .. " records taken"
        end, 30, 0.05, "every reading through the job")
        -- A graceful stop runs every batch it took through both outputs.
        d:signal("TERM")
        assert.equal(0, d:wait_exit(20))
        assert.equal(#READINGS, consumed(d))
        for _, b in ipairs(d:batches("sensor_pipeline")) do
            assert(not b.failed or b.failed == 0, b.line)
        end
        assert.same({}, d:log_lines("batch %d+ failed"))

        assert.same(LATEST, sensors(redis))

        -- Exactly the alerts above the threshold, each with its device's
        -- routing key ("pm25.<device>") and body; none for attic (below the
        -- threshold) and ghost (malformed only).
        local want = {}
        for _, device in ipairs(DEVICES) do
            local mine = ALERTS[device] or {}
            assert.same(mine, per_device[device]:wait(#mine, mark[device]), "alerts of " .. device)
            for _, a in ipairs(mine) do
                want[#want + 1] = a
            end
        end
        local all = alerts:wait(ALERT_COUNT, alerts_mark)
        table.sort(all, by_device)
        table.sort(want, by_device)
        assert.same(want, all)
    end)

    -- Fails with jobs/sensor_pipeline.lua as of 9ad3b27: its filter lets
    -- these readings through, an output then fails the whole batch every
    -- time (to_redis: a null co2 or an object ts is no string or number;
    -- to_rabbitmq: cjson.safe cannot encode an infinite pm25, and a
    -- 300-byte device makes a routing key above AMQP's 255 bytes), the
    -- partition is sought back and the batch fails again, forever: nothing
    -- behind them gets through, and the alerts before them in the batch are
    -- published again at every attempt.
    it("gets past readings no output can write (co2 null, ts an object, pm25 infinite, a "
       .. "device name too long for a routing key) instead of stalling on them", function()
        local kafka = kafka_for_test(1)           -- one partition: one order
        redis:cli("FLUSHALL")
        local before, after = per_device.kitchen, per_device.porch
        local before_mark, after_mark = before:count(), after:count()
        kafka:produce("datapoints", {
            '{"device":"kitchen","pm25":200,"ts":1700000000101}',
            '{"device":"attic","pm25":5,"co2":null,"ts":1700000000102}',
            '{"device":"attic","pm25":6,"ts":{"ms":1700000000103}}',
            '{"device":"garage","pm25":1e999,"ts":1700000000104}',
            '{"device":"' .. string.rep("x", 300) .. '","pm25":500,"ts":1700000000105}',
            '{"device":"porch","pm25":300,"co2":800,"ts":1700000000106}',
        })
        d = driver.new()
        copy_job(d)
        d:start { env = env(kafka) }
        d:wait_for_log("assigned datapoints%[", 30)
        -- The reading behind the others: in Redis, and its alert out.
        d:wait_until(function()
            local porch = hash(redis, "sensor:porch")
            local failed = #d:log_lines("batch %d+ failed")
            return porch.pm25 == "300" and after:count() > after_mark,
                   str_format("sensor:porch pm25 %s, %d porch alerts, %d kitchen alerts (1 "
                              .. "expected), %d failed batch attempts",
                              tostring(porch.pm25), after:count() - after_mark,
                              before:count() - before_mark, failed)
        end, 15, 0.1, "the last reading through both outputs")
        d:signal("TERM")
        assert.equal(0, d:wait_exit(20))
        assert.same({ { device = "kitchen", pm25 = 200, ts = 1700000000101 } },
                    before:wait(1, before_mark))
        assert.same({ { device = "porch", pm25 = 300, ts = 1700000000106 } },
                    after:wait(1, after_mark))
        assert.same({ pm25 = "300", co2 = "800", ts = "1700000000106" },
                    hash(redis, "sensor:porch"))
    end)

    it("is not started without EMBER_KAFKA_BROKERS, EMBER_REDIS_URL and EMBER_RABBITMQ_URL, "
       .. "and the driver keeps running its other jobs", function()
        d = driver.new()
        copy_job(d)
        d:write_job("tick.lua", [[
local ember = require "ember"
local job = ember.job { name = "tick" }
job:generator { kind = "sequence", rate = 20 }
   :save_as_text_files(]] .. driver.quote(d:path("out/tick")) .. [[)
return job
]])
        for _, e in ipairs({
            -- none of them (whatever the shell running the suite has set)
            { EMBER_KAFKA_BROKERS = false, EMBER_REDIS_URL = false, EMBER_RABBITMQ_URL = false },
            -- two of three is not enough
            { EMBER_KAFKA_BROKERS = "127.0.0.1:9", EMBER_REDIS_URL = redis.url,
              EMBER_RABBITMQ_URL = false },
        }) do
            d:start { env = e }
            local line = d:wait_for_log("sensor_pipeline%.lua: not started", 10)
            assert.truthy(line:find("not started: set EMBER_KAFKA_BROKERS, EMBER_REDIS_URL and "
                                    .. "EMBER_RABBITMQ_URL to run it", 1, true), line)
            -- The driver goes on: the other job makes batches after that.
            local mark = d:log_mark()
            d:wait_for_log("%[tick%] batch %d+: [1-9]%d* records?", 10, { from = mark })
            assert.is_true(d:running())
            assert.same({}, d:log_lines("%[sensor_pipeline%]"))
            d:signal("TERM")
            assert.equal(0, d:wait_exit(10))
        end
    end)
end)
