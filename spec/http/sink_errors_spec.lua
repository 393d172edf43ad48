-- A sink's I/O error in /api/v1/pools: when the server of a Redis, RabbitMQ
-- or Kafka sink goes away under a batch, its pool (or, for Kafka, the
-- shared producer's entry) shows the error's text and time as
-- lastIoError, kept apart from the connect failures that follow, and the
-- batch goes through once the server is back.

local driver = require "support.driver"
local http = require "support.http"
local tcp = require "support.tcp"
local redis_server = require "support.redis_server"
local rabbit = require "support.rabbitmq_server"
local kafka_mock = require "support.kafka_mock"
local cjson = require "cjson"


local JOB = [[
local ember = require "ember"
local job = ember.job { name = "out", batch_interval = "200ms", batch_timeout = "3m" }
job:socket { host = "127.0.0.1", port = {{port}} }
   {{sink}}
return job
]]

local CONF = driver.conf { ["streaming.batch.maxRetries"] = 1,
                           ["streaming.batch.maxBackoff"] = "500ms" }


local function pool(port, kind)
    local list = http.json(port, "/api/v1/pools")
    for _, p in ipairs(list) do
        if p.kind == kind then
            return p, cjson.encode(list)
        end
    end
    return nil, cjson.encode(list)
end


-- The pool once the snapshot lists it (published every 250 ms).
local function listed(d, port, kind)
    return d:wait_until(function()
        local p, all = pool(port, kind)
        return p and p.borrows > 0 and p, all
    end, 20, 0.05, "the " .. kind .. " pool in /api/v1/pools")
end


local function iso_time(s)
    return type(s) == "string" and s:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d") ~= nil
end


describe("sink I/O errors in the API", function()
    local d, srv

    before_each(function()
        d = driver.new()
        srv = d:own(tcp.server())
    end)

    after_each(function()
        d:stop()
    end)

    local function start(sink)
        d:write_job("out.lua", driver.render(JOB, { port = srv.port, sink = sink }))
        d:start { conf = CONF }
        local port = d:http_port()
        srv:accept(20)
        return port
    end

    it("shows the text of a Redis connection that broke mid-batch", function()
        local redis = redis_server.start { persist = true }
        local ok, err = pcall(function()
            local port = start(redis_server.render(
                ':to_redis { url = {{url}}, command = function(v) return "RPUSH", "out", v end }',
                { url = driver.quote(redis.url) }))
            srv:send_lines({ "a" })
            redis:wait_len(d, "out", 1, 20)
            local before = listed(d, port, "redis")
            assert.equal(cjson.null, before.lastIoError)
            assert.equal(0, before.ioErrors)
            -- Writes wait on the server: the next batch's RPUSH is sent and
            -- its connection stays borrowed until the server dies under it.
            redis:cli("CLIENT", "PAUSE", "60000", "WRITE")
            srv:send_lines({ "b" })
            d:wait_until(function()
                local p, all = pool(port, "redis")
                return p.open == 1 and p.idle == 0 and p.borrows > before.borrows, all
            end, 20, 0.02, "the batch holding its connection")
            redis:kill()
            local p = d:wait_until(function()
                local p, all = pool(port, "redis")
                return p.ioErrors == 1 and p, all
            end, 30, 0.05, "the pool's I/O error")
            assert.truthy(p.lastIoError:find("connection closed by the server", 1, true), p.lastIoError)
            assert.truthy(p.lastIoError:find("after 0 of 1 replies", 1, true), p.lastIoError)
            assert.truthy(p.lastIoError:find(tostring(redis.port), 1, true), p.lastIoError)
            assert.is_true(iso_time(p.lastIoErrorTime), tostring(p.lastIoErrorTime))
            assert.is_true(p.broken >= 1)
            local code, body = http.request(port, "GET", "/metrics")
            assert.equal(200, code)
            assert.truthy(body:find('ember_pool_io_errors_total{kind="redis",endpoint="[^"]*"} 1\n'), body)
            -- The reconnects fail otherwise; the I/O error stays.
            local later = d:wait_until(function()
                local q, all = pool(port, "redis")
                return q.connectFailures > 0 and q, all
            end, 30, 0.05, "a failed reconnect")
            assert.equal(p.lastIoError, later.lastIoError)
            assert.truthy(later.lastError:find("refused", 1, true), later.lastError)

            redis:spawn()                   -- back: the batch goes through
            redis:wait_len(d, "out", 2, 30)
            assert.same({ "a", "b" }, redis:lines("LRANGE", "out", "0", "-1"))
        end)
        redis:stop()
        assert(ok, err)
    end)

    it("shows the text of a RabbitMQ connection the broker closed, met by a batch", function()
        local mq = rabbit.start()
        local ok, err = pcall(function()
            mq:declare("sink.out")
            local port = start(':to_rabbitmq { url = ' .. driver.quote(mq.url)
                               .. ', routing_key = "sink.out", timeout = "5s", '
                               .. 'body = function(v) return v .. "\\n" end }')
            srv:send_lines({ "a" })
            mq:wait_queue("sink.out", function(q) return q.ready == 1 end, 20, "the first message")
            assert.equal(cjson.null, listed(d, port, "rabbitmq").lastIoError)
            mq:stop(true)                   -- keeps its data for the restart
            srv:send_lines({ "b" })
            local p = d:wait_until(function()
                local p, all = pool(port, "rabbitmq")
                return p.lastIoError ~= cjson.null and p, all
            end, 60, 0.05, "the pool's I/O error")
            assert.truthy(p.lastIoError:find("amqp://guest@127.0.0.1:", 1, true), p.lastIoError)
            -- the socket failed on publish, or the close came with the confirms
            assert.truthy(p.lastIoError:find("cannot publish: ", 1, true)
                          or p.lastIoError:find("connection", 1, true), p.lastIoError)
            assert.is_true(p.ioErrors >= 1)
            assert.is_true(iso_time(p.lastIoErrorTime), tostring(p.lastIoErrorTime))

            mq:restart()
            mq:wait_queue("sink.out", function(q) return q.ready >= 2 end, 60, "the second message")
            local bodies = mq:consume("sink.out", 2)
            assert.same({ "a", "b" }, bodies)
        end)
        mq:stop()
        assert(ok, err)
    end)

    it("shows a Kafka sink's failed delivery beside the pools", function()
        local mock = kafka_mock.start { topics = { "sink:1" } }
        local ok, err = pcall(function()
            local port = start(':to_kafka { brokers = ' .. driver.quote(mock.bootstrap)
                               .. ', topic = "sink" }')
            srv:send_lines({ "a" })
            d:wait_until(function()
                return #mock:values("sink") == 1
            end, 30, 0.2, "the first record in the topic")
            local before = d:wait_until(function()
                local p, all = pool(port, "kafka")
                return p, all
            end, 20, 0.05, "the kafka producer in /api/v1/pools")
            assert.equal(mock.bootstrap, before.endpoint)
            assert.equal(cjson.null, before.lastIoError)
            mock:command("down 1")
            srv:send_lines({ "b" })
            -- librdkafka retries until message.timeout.ms (30 s), then fails it
            local p = d:wait_until(function()
                local p, all = pool(port, "kafka")
                return p.lastIoError ~= cjson.null and p, all
            end, 90, 0.2, "the failed delivery")
            assert.truthy(p.lastIoError:find("delivery to sink[", 1, true), p.lastIoError)
            assert.is_true(p.ioErrors >= 1)
            assert.is_true(iso_time(p.lastIoErrorTime), tostring(p.lastIoErrorTime))
            mock:command("up 1")
            d:wait_until(function()
                local v = mock:values("sink")
                return v[#v] == "b", cjson.encode(v)
            end, 60, 0.2, "the second record in the topic")
        end)
        d:stop()
        mock:stop()
        assert(ok, err)
    end)
end)
