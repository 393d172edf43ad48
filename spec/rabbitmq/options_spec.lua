-- RabbitMQ source and sink options, checked when a job loads, and a broker
-- that is not there. No server is started: `ember check` loads a job
-- without touching the network, and the unreachable broker is a closed port.

local driver = require "support.driver"
local rabbit = require "support.rabbitmq_server"


-- Runs `ember check` on a job script; returns the exit code and the output.
local function check(d, source)
    local path = d:write_job("job.lua", source)
    return rabbit.run(rabbit.shell_quote(driver.bin) .. " check " .. rabbit.shell_quote(path))
end


local function source_job(opts)
    return [[
local ember = require "ember"
local job = ember.job { name = "opts" }
job:rabbitmq { ]] .. opts .. [[ }
   :print()
return job
]]
end


local function sink_job(opts)
    return [[
local ember = require "ember"
local job = ember.job { name = "opts" }
job:generator { kind = "sequence" }
   :to_rabbitmq { ]] .. opts .. [[ }
return job
]]
end


describe("rabbitmq options", function()
    local d

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)


    it("loads a job whose source options are valid, without connecting", function()
        local rc, out = check(d, source_job([[url = "amqp://u:p@127.0.0.1:1/", queue = "q",
            exchange = "x", routing_key = "k", prefetch = 10, declare = false,
            reconnect_delay = "200ms"]]))
        assert.equal(0, rc, out)
        assert.truthy(out:find("rabbitmq", 1, true), out)
    end)

    it("rejects a URL that is not an AMQP URL, naming the file, line and option", function()
        local rc, out = check(d, source_job([[url = "http://localhost", queue = "q"]]))
        assert.not_equal(0, rc)
        assert.truthy(out:find("job.lua:3: rabbitmq source", 1, true), out)
        assert.truthy(out:find("option 'url' is not an AMQP URL", 1, true), out)
    end)

    it("requires url and queue", function()
        local rc, out = check(d, source_job([[queue = "q"]]))
        assert.not_equal(0, rc)
        assert.truthy(out:find("option 'url' is required", 1, true), out)
        rc, out = check(d, source_job([[url = "amqp://localhost"]]))
        assert.not_equal(0, rc)
        assert.truthy(out:find("option 'queue' is required", 1, true), out)
    end)

    it("rejects a prefetch outside 1-65535, an unknown option and a routing key without exchange", function()
        local rc, out = check(d, source_job([[url = "amqp://localhost", queue = "q", prefetch = 0]]))
        assert.not_equal(0, rc)
        assert.truthy(out:find("option 'prefetch' must be 1-65535, got 0", 1, true), out)
        rc, out = check(d, source_job([[url = "amqp://localhost", queue = "q", prefech = 10]]))
        assert.not_equal(0, rc)
        assert.truthy(out:find("prefech", 1, true), out)
        rc, out = check(d, source_job([[url = "amqp://localhost", queue = "q", routing_key = "k"]]))
        assert.not_equal(0, rc)
        assert.truthy(out:find("set 'exchange' too", 1, true), out)
    end)

    it("refuses amqps:// URLs plainly rather than connecting without TLS", function()
        local rc, out = check(d, source_job([[url = "amqps://localhost", queue = "q"]]))
        assert.not_equal(0, rc)
        assert.truthy(out:find("amqps:// (TLS) is not supported", 1, true), out)
    end)

    it("checks to_rabbitmq's options when the job loads", function()
        local rc, out = check(d, sink_job([[url = "amqp://localhost", exchange = "x",
            routing_key = function(r) return "k" end, mandatory = true, timeout = "5s"]]))
        assert.equal(0, rc, out)
        rc, out = check(d, sink_job([[url = "amqp://localhost"]]))
        assert.not_equal(0, rc)
        assert.truthy(out:find("'routing_key' names the queue", 1, true), out)
        rc, out = check(d, sink_job([[url = "localhost", routing_key = "q"]]))
        assert.not_equal(0, rc)
        assert.truthy(out:find("option 'url' must be an amqp://", 1, true), out)
        rc, out = check(d, sink_job([[url = "amqp://localhost", routing_key = "q", body = 3]]))
        assert.not_equal(0, rc)
        assert.truthy(out:find("option 'body' must be a function", 1, true), out)
        rc, out = check(d, sink_job([[url = "amqp://localhost", routing_key = "q", exchnage = "x"]]))
        assert.not_equal(0, rc)
        assert.truthy(out:find("unknown option 'exchnage'", 1, true), out)
    end)
end)


describe("rabbitmq broker down", function()
    it("keeps the driver running, logs one warning per outage without the password, and backs off", function()
        local d = driver.new()
        finally(function() d:stop() end)
        local port = rabbit.free_port()     -- nobody listens there
        d:write_job("down.lua", source_job([[url = "amqp://user:s3cret@127.0.0.1:]] .. port
            .. [[", queue = "q", reconnect_delay = "50ms"]]))
        d:start()
        d:wait_for_log("still down: cannot connect to 127.0.0.1:" .. port, 10, { count = 3 })
        local warns = d:log_lines("warn  [opts] rabbitmq queue 'q' at amqp://user@127.0.0.1:" .. port
                                  .. "/: cannot connect", { plain = true })
        assert.equal(1, #warns, d:log_tail())
        assert.equal(0, #d:log_lines("s3cret", { plain = true }), d:log_tail())
        -- Each retry waits twice as long as the one before.
        local lines = d:log_lines("still down")
        assert.truthy(lines[1]:find("retrying in 100ms", 1, true), lines[1])
        assert.truthy(lines[2]:find("retrying in 200ms", 1, true), lines[2])
        assert.truthy(d:running())
    end)
end)
