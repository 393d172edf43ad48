-- Isolation: a batch that waits on its sink's server is not a runaway.
-- The time a batch spends waiting for a pooled connection, a reply, a
-- confirm or a delivery report is bounded by that sink's own timeout, so
-- batch_timeout does not count it: a Redis that stops answering for longer
-- than the job's batch_timeout delays the batch, and the job goes on with
-- every record once the server answers again.

local driver = require "support.driver"
local redis_server = require "support.redis_server"
local tcp = require "support.tcp"

local JOB = [[
local ember = require "ember"
local job = ember.job { name = "out", batch_interval = "200ms", batch_timeout = "1s" }
job:socket { host = "127.0.0.1", port = {{port}} }
   :to_redis { url = {{url}}, command = function(v) return "RPUSH", "out", v end }
return job
]]

describe("a batch waiting on its sink's server", function()
    local d, srv, redis

    before_each(function()
        d = driver.new()
        srv = d:own(tcp.server())
        redis = redis_server.start()
    end)

    after_each(function()
        d:stop()
        redis:stop()
    end)

    it("is not stopped by batch_timeout while the server does not answer", function()
        d:write_job("out.lua", driver.render(JOB, { port = srv.port, url = driver.quote(redis.url) }))
        d:start {}
        srv:accept(20)
        srv:send_lines(redis_server.seq("a", 1, 50))
        redis:wait_len(d, "out", 50, 30)
        -- The server holds every write for 4 s, four times the deadline.
        local mark = d:log_mark()
        redis:cli("CLIENT", "PAUSE", "4000", "WRITE")
        srv:send_lines(redis_server.seq("b", 1, 50))
        redis:wait_len(d, "out", 100, 60)
        srv:send_lines(redis_server.seq("c", 1, 50))
        redis:wait_len(d, "out", 150, 30)
        local want = redis_server.seq("a", 1, 50)
        for _, p in ipairs { "b", "c" } do
            for _, v in ipairs(redis_server.seq(p, 1, 50)) do want[#want + 1] = v end
        end
        assert.same(want, redis:lines("LRANGE", "out", "0", "-1"))
        assert.same({}, d:log_lines("batch_timeout", { from = mark, plain = true }))
    end)
end)
