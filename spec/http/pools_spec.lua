-- The sink pools in the API: a job writing to a real redis-server shows its
-- pool's connections; when the server goes away the pool's last error and
-- the job's blocked batch show in the API and fail /readyz, and both clear
-- when it returns, with every record written once. The pool's size is the
-- driver's connector.pool.size.

local driver = require "support.driver"
local http = require "support.http"
local redis_server = require "support.redis_server"
local cjson = require "cjson"


local SINK_JOB = [[
local ember = require "ember"
local job = ember.job { name = "pusher", batch_interval = "200ms" }
job:socket { host = "127.0.0.1", port = {{port}} }
   :to_redis { url = {{url}}, command = function(v) return "RPUSH", "pool:out", v end }
return job
]]


describe("sink pools in the API", function()
    local d, srv, redis

    before_each(function()
        d = driver.new()
        redis = redis_server.start { persist = true } -- the kill below keeps what it had
    end)

    after_each(function()
        d:stop()
        redis:stop()
    end)

    it("shows a pool's connections and last error, and a blocked job in /readyz, until the server returns", function()
        local tcp = require "support.tcp"
        srv = d:own(tcp.server())
        d:write_job("pusher.lua", redis_server.render(SINK_JOB, {
            port = srv.port, url = driver.quote(redis.url) }))
        d:start { conf = driver.conf { ["streaming.batch.maxRetries"] = 1,
                                       ["streaming.batch.maxBackoff"] = "500ms",
                                       ["connector.pool.size"] = "3" } }
        local port = d:http_port()
        srv:accept(20)
        srv:send_lines({ "a", "b", "c" })
        redis:wait_len(d, "pool:out", 3, 20)
        local pool = d:wait_until(function()
            local list = http.json(port, "/api/v1/pools")
            return #list == 1 and list[1].borrows > 0 and list[1], cjson.encode(list)
        end, 10, 0.05, "the redis pool in /api/v1/pools")
        assert.equal("redis", pool.kind)
        assert.truthy(pool.endpoint:find(tostring(redis.port), 1, true), pool.endpoint)
        assert.is_true(pool.open >= 1)
        assert.equal(3, pool.max)               -- connector.pool.size, through the job's runtime
        assert.equal(cjson.null, pool.lastError)
        local code, body = http.request(port, "GET", "/metrics")
        assert.equal(200, code)
        assert.truthy(body:find('ember_pool_connections{kind="redis",endpoint="', 1, true))

        redis:kill()
        srv:send_lines({ "d" })
        local doc = d:wait_until(function()
            local c, b = http.request(port, "GET", "/readyz")
            local doc = cjson.decode(b)
            for _, r in ipairs(doc.reasons) do
                if r.check == "job_blocked" then
                    return c == 503 and doc
                end
            end
            return false, b
        end, 30, 0.05, "/readyz failing on the blocked job")
        assert.equal("pusher", doc.reasons[1].job)
        local failing = d:wait_until(function()
            local p = http.json(port, "/api/v1/pools")[1]
            return p.connectFailures > 0 and p, cjson.encode(p)
        end, 20, 0.05, "the pool's connect failures")
        assert.truthy(failing.lastError:find("refused", 1, true), failing.lastError)
        local j = http.json(port, "/api/v1/jobs/pusher")
        assert.is_true(j.blocked)
        assert.truthy(j.lastError)

        redis:spawn() -- same port
        redis:wait_len(d, "pool:out", 4, 30)
        d:wait_until(function()
            local c = http.request(port, "GET", "/readyz")
            return c == 200, c
        end, 30, 0.05, "/readyz back to 200")
        assert.is_false(http.json(port, "/api/v1/jobs/pusher").blocked)
        assert.same({ "a", "b", "c", "d" }, redis:lines("LRANGE", "pool:out", "0", "-1"))
    end)
end)
