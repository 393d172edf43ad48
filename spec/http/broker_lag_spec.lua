-- Receiver lag for Redis and RabbitMQ sources in /api/v1/receivers and
-- /metrics, against real servers. Each job's sink is a second redis-server
-- that is down when the job starts: its first batch keeps retrying, so
-- nothing is acknowledged and the source's backlog holds still at exactly
-- what the spec wrote. When the sink's server comes up, every record goes
-- through and the lag falls to 0. The stream job's max_rate also keeps part
-- of its stream unread, so both halves of its lag show.

local driver = require "support.driver"
local http = require "support.http"
local redis_server = require "support.redis_server"
local rabbit = require "support.rabbitmq_server"
local cjson = require "cjson"


local N = 40

local REDIS_JOB = [[
local ember = require "ember"
local job = ember.job { name = "{{name}}", batch_interval = "200ms" }
job:redis { url = {{src}}, mode = "{{mode}}", key = "lag:in", block = "50ms"{{extra}} }
   :to_redis { url = {{dst}}, command = function(v) return "RPUSH", "lag:out", v end }
return job
]]

local RABBIT_JOB = [[
local ember = require "ember"
local job = ember.job { name = "rabbit", batch_interval = "200ms" }
job:rabbitmq { url = {{src}}, queue = "lag.in", prefetch = {{prefetch}} }
   :to_redis { url = {{dst}}, command = function(v) return "RPUSH", "lag:out", v end }
return job
]]

local CONF = driver.conf { ["streaming.batch.maxRetries"] = 1,
                           ["streaming.batch.maxBackoff"] = "300ms" }


local function receiver(port)
    local list = http.json(port, "/api/v1/receivers")
    return list[1], cjson.encode(list)
end


-- The sample of ember_receiver_lag_records for a job's first source.
local function lag_metric(port, job, kind)
    local code, body = http.request(port, "GET", "/metrics")
    assert.equal(200, code)
    local v = body:match('\nember_receiver_lag_records{job="' .. job .. '",source="1",kind="'
                         .. kind .. '"} (%S+)\n')
    return v and tonumber(v), body
end


local function values(prefix, n)
    local t = {}
    for i = 1, n do
        t[i] = string.format("%s-%03d", prefix, i)
    end
    return t
end


describe("receiver lag for Redis and RabbitMQ sources", function()
    local d, src, dst

    before_each(function()
        d = driver.new()
        src = redis_server.start()
        dst = redis_server.start()
        dst:kill()                      -- the sink's server is down: the job blocks
    end)

    after_each(function()
        d:stop()
        src:stop()
        dst:stop()
    end)

    it("reports a Redis list source's backlog: the list plus its processing list", function()
        local want = values("l", N)
        src:cli("RPUSH", "lag:in", (table.unpack or unpack)(want))
        d:write_job("list.lua", driver.render(REDIS_JOB, {
            name = "list", mode = "list", extra = "", src = driver.quote(src.url), dst = driver.quote(dst.url) }))
        d:start { conf = CONF }
        local port = d:http_port()
        -- Blocked: what it took waits in the processing list, unacknowledged.
        local rx = d:wait_until(function()
            local r, all = receiver(port)
            return r and r.lag == N and type(r.lagDetail) == "table" and r.numRecords > 0 and r, all
        end, 30, 0.1, "the list source's lag of " .. N)
        local detail = rx.lagDetail[1]
        assert.equal("lag:in", detail.key)
        assert.equal("lag:in:processing:list", detail.processingKey)
        assert.equal(N, detail.length + detail.processingLength)
        assert.is_true(detail.processingLength > 0, cjson.encode(detail))
        assert.equal(src:num("LLEN", "lag:in") + src:num("LLEN", "lag:in:processing:list"), N)
        assert.equal(N, (lag_metric(port, "list", "redis")))
        local _, status = http.request(port, "GET", "/api/v1/status")  -- what `ember status` prints
        assert.truthy(status:find("list/1 redis%s+%S+%s+%d+%s+%S+%s+" .. N .. " "), status)
        d:wait_until(function()
            return http.json(port, "/api/v1/jobs/list").blocked
        end, 30, 0.1, "the job blocked on its sink")
        assert.equal(cjson.null, http.json(port, "/api/v1/jobs/list").maxRate)
        assert.equal(N, receiver(port).lag) -- and still held

        dst:spawn()                     -- the sink returns: everything acknowledged
        dst:wait_len(d, "lag:out", N, 60)
        d:wait_until(function()
            local r, all = receiver(port)
            return r.lag == 0 and r.lagDetail[1].processingLength == 0 and lag_metric(port, "list", "redis") == 0, all
        end, 30, 0.1, "the list source's lag back to 0")
        table.sort(want)
        local got = dst:lines("LRANGE", "lag:out", "0", "-1")
        table.sort(got)
        assert.same(want, got)

        src:kill()                      -- the source's server gone: the lag is unknown
        d:wait_until(function()
            local r, all = receiver(port)
            return r.lag == cjson.null and r.lagDetail == cjson.null and r.failing, all
        end, 30, 0.1, "the lag unknown while the source fails")
        assert.is_nil(lag_metric(port, "list", "redis"))
    end)

    it("reports a Redis stream source's backlog: its group's pending entries plus its lag", function()
        local cmds = {}
        for i, v in ipairs(values("s", N)) do
            cmds[i] = { "XADD", "lag:in", "*", "value", v }
        end
        src:pipe(cmds)
        d:write_job("stream.lua", driver.render(REDIS_JOB, {
            name = "stream", mode = "stream", extra = ", max_rate = 4", src = driver.quote(src.url), dst = driver.quote(dst.url) }))
        d:start { conf = CONF }
        local port = d:http_port()
        local rx = d:wait_until(function()
            local r, all = receiver(port)
            return r and r.lag == N and type(r.lagDetail) == "table" and r.lagDetail[1].pending > 0 and r, all
        end, 30, 0.1, "the stream source's lag of " .. N)
        local detail = rx.lagDetail[1]
        assert.equal("lag:in", detail.stream)
        assert.equal("ember-stream", detail.group)
        assert.equal(N, detail.pending + detail.lag)
        assert.is_true(detail.lag > 0, cjson.encode(detail)) -- max_rate keeps some unread
        assert.equal(N, (lag_metric(port, "stream", "redis")))
        -- the job's limit is its source's max_rate; the list job has none
        assert.equal(4, http.json(port, "/api/v1/jobs/stream").maxRate)

        dst:spawn()
        dst:wait_len(d, "lag:out", N, 60)
        local back = d:wait_until(function()
            local r, all = receiver(port)
            return r.lag == 0 and r, all
        end, 30, 0.1, "the stream source's lag back to 0")
        assert.equal(0, back.lagDetail[1].pending)
        assert.equal(0, back.lagDetail[1].lag)
        assert.equal(0, (lag_metric(port, "stream", "redis")))
    end)

    it("reads on with the lag unknown when the server refuses the lag's command", function()
        local acl = redis_server.start { args = { "--user", "reader", "on", ">pw", "~*", "&*", "+@all", "-llen" } }
        local ok, err = pcall(function()
            acl:cli("RPUSH", "lag:in", "x", "y", "z")
            local url = "redis://reader:pw@127.0.0.1:" .. acl.port
            d:write_job("list.lua", driver.render(REDIS_JOB, {
                name = "list", mode = "list", extra = "", src = driver.quote(url),
                dst = driver.quote(url) }))
            d:start { conf = CONF }
            local port = d:http_port()
            acl:wait_len(d, "lag:out", 3, 30)
            d:wait_for_log("lag not reported: LLEN failed: NOPERM", 20, { plain = true })
            local r = d:wait_until(function()
                local r, all = receiver(port)
                return r.numRecords == 3 and r, all
            end, 10, 0.05, "the receiver's 3 records in the API")
            assert.equal(cjson.null, r.lag)
            assert.equal(cjson.null, r.lagDetail)
            assert.is_nil(lag_metric(port, "list", "redis"))
            local got = acl:lines("LRANGE", "lag:out", "0", "-1")
            table.sort(got)
            assert.same({ "x", "y", "z" }, got)
        end)
        acl:stop()
        assert(ok, err)
    end)

    describe("RabbitMQ", function()
        local mq

        setup(function()
            mq = rabbit.start()
        end)

        teardown(function()
            if mq then mq:stop() end
        end)

        it("reports a RabbitMQ source's backlog: the queue's ready messages plus its unacked deliveries", function()
            local PREFETCH = 7
            mq:declare("lag.in")
            local want = values("r", N)
            mq:publish("lag.in", want)
            mq:wait_queue("lag.in", function(q) return q.ready == N end, 20, "the published messages")
            d:write_job("rabbit.lua", driver.render(RABBIT_JOB, {
                src = driver.quote(mq.url), dst = driver.quote(dst.url), prefetch = PREFETCH }))
            d:start { conf = CONF }
            local port = d:http_port()
            -- Blocked: the prefetch window taken and held unacked, the rest ready.
            local rx = d:wait_until(function()
                local r, all = receiver(port)
                return r and type(r.lagDetail) == "table" and r.lagDetail[1].unacked == PREFETCH
                       and r, all
            end, 30, 0.1, "the prefetch window held unacked")
            assert.equal(N, rx.lag)
            local detail = rx.lagDetail[1]
            assert.equal("lag.in", detail.queue)
            assert.equal(N - PREFETCH, detail.messages)
            assert.equal(1, detail.consumers)
            -- rabbitmqctl, an independent view, agrees
            local q = mq:queue("lag.in")
            assert.equal(N - PREFETCH, q.ready)
            assert.equal(PREFETCH, q.unacked)
            assert.equal(N, (lag_metric(port, "rabbit", "rabbitmq")))

            dst:spawn()
            dst:wait_len(d, "lag:out", N, 60)
            local back = d:wait_until(function()
                local r, all = receiver(port)
                return r.lag == 0 and r, all
            end, 30, 0.1, "the RabbitMQ source's lag back to 0")
            assert.equal(0, back.lagDetail[1].messages)
            assert.equal(0, back.lagDetail[1].unacked)
            mq:stop(true)               -- the broker gone: the lag is unknown
            d:wait_until(function()
                local r, all = receiver(port)
                return r.lag == cjson.null and r.lagDetail == cjson.null, all
            end, 60, 0.1, "the lag unknown while the broker is down")
            mq:restart()
            local got = {}
            for _, v in ipairs(dst:lines("LRANGE", "lag:out", "0", "-1")) do
                got[#got + 1] = (v:gsub("\n$", ""))
            end
            table.sort(got)
            assert.same(want, got)
        end)
    end)
end)
