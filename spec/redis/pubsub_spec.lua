-- The Redis pub/sub source: SUBSCRIBE or PSUBSCRIBE, fire-and-forget.
-- redis-cli publishes and reads the output.

local driver = require "support.driver"
local redis_server = require "support.redis_server"

local render, seq, sorted = redis_server.render, redis_server.seq, redis_server.sorted
local prefixed = redis_server.prefixed
local q = driver.quote

local CONF = { ["streaming.blockInterval"] = "100ms" }

local JOB = [[
local ember = require "ember"
local job = ember.job { name = "news", batch_interval = "200ms" }

job:redis { url = {{url}}, mode = "pubsub", channel = {{channel}} {{extra}} }
   :map(function(v) return "out:" .. v end)
   :to_redis { url = {{url}}, command = function(v) return "RPUSH", {{out}}, v end }

return job
]]


local function publishes(channel, items)
    local cmds = {}
    for i, v in ipairs(items) do
        cmds[i] = { "PUBLISH", channel, v }
    end
    return cmds
end


describe("the redis pubsub source", function()
    local srv, d

    setup(function()
        srv = redis_server.start()
    end)

    teardown(function()
        if srv then
            srv:stop()
        end
    end)

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    it("delivers every message published on the channels it subscribed to, and no other",
       function()
        d:write_job("news", render(JOB, { url = q(srv.url), channel = q("p1.a, p1.b"),
                                          out = q("p1:out"), extra = "" }))
        d:start { conf = CONF }
        d:wait_for_log("%(job news%): connected", 10)
        local a, b = seq("a", 1, 300), seq("b", 1, 100)
        srv:pipe(publishes("p1.a", a))
        srv:pipe(publishes("p1.c", seq("c", 1, 10)))      -- not subscribed
        srv:pipe(publishes("p1.b", b))
        srv:cli("PUBLISH", "p1.a", "sentinel")            -- after everything else
        srv:wait_len(d, "p1:out", 401)
        local out = srv:lines("LRANGE", "p1:out", "0", "-1")
        assert.equal("out:sentinel", out[#out])
        local expected = prefixed(a, "out:")
        for _, v in ipairs(prefixed(b, "out:")) do
            expected[#expected + 1] = v
        end
        expected[#expected + 1] = "out:sentinel"
        assert.same(sorted(expected), sorted(out))
        -- one channel's messages keep their order
        local only_a = {}
        for _, v in ipairs(out) do
            if v:match("^out:a") then
                only_a[#only_a + 1] = v
            end
        end
        assert.same(prefixed(a, "out:"), only_a)
    end)

    it("subscribes to glob patterns with pattern = true", function()
        d:write_job("news", render(JOB, { url = q(srv.url), channel = q("p2.*"),
                                          out = q("p2:out"), extra = ", pattern = true" }))
        d:start { conf = CONF }
        d:wait_for_log("%(job news%): connected", 10)
        srv:cli("PUBLISH", "p2.x", "one")
        srv:cli("PUBLISH", "other", "two")
        srv:cli("PUBLISH", "p2.y.z", "three")
        srv:wait_len(d, "p2:out", 2)
        assert.same({ "out:one", "out:three" }, srv:lines("LRANGE", "p2:out", "0", "-1"))
    end)
end)
