-- The Redis stream source: XREADGROUP in a consumer group, XACK only after
-- the batch's outputs succeeded, pending entries read again after a crash,
-- entries of a dead consumer taken over with XAUTOCLAIM. redis-cli writes
-- the input and reads the output.

local driver = require "support.driver"
local redis_server = require "support.redis_server"

local render, seq, sorted = redis_server.render, redis_server.seq, redis_server.sorted
local prefixed = redis_server.prefixed
local q = driver.quote

local CONF = { ["streaming.blockInterval"] = "100ms" }

local DELIVER_JOB = [[
local ember = require "ember"
local job = ember.job { name = "events", batch_interval = "200ms" }

job:redis { url = {{url}}, mode = "stream", key = {{key}} {{extra}} }
   :map(function(v) return "out:" .. v end)
   :to_redis { url = {{url}}, command = function(v) return "RPUSH", {{out}}, v end }

return job
]]

local function xadds(key, items)
    local cmds = {}
    for i, v in ipairs(items) do
        cmds[i] = { "XADD", key, "*", "value", v }
    end
    return cmds
end


describe("the redis stream source", function()
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

    local function wait_acked(key, group)
        d:wait_until(function()
            local n = srv:num("XPENDING", key, group)
            return n == 0, n .. " entries pending"
        end, 5, 0.05, "no entry pending in " .. group)
    end

    it("delivers every entry once, in order: the field 'value', or all fields as JSON", function()
        local items = seq("a", 1, 400)
        -- written before the group exists: the group starts at the beginning
        srv:pipe(xadds("s1", { unpack(items, 1, 300) }))
        d:write_job("events", render(DELIVER_JOB, { url = q(srv.url), key = q("s1"),
                                                    out = q("s1:out"), extra = "" }))
        d:start { conf = CONF }
        d:wait_for_log("created consumer group 'ember%-events' on stream 's1'", 10)
        srv:wait_len(d, "s1:out", 300)
        srv:pipe(xadds("s1", { unpack(items, 301, 400) }))
        srv:cli("XADD", "s1", "*", "device", "sensor-1", "note", 'say "hi"')
        srv:wait_len(d, "s1:out", 401)
        wait_acked("s1", "ember-events")
        local expected = prefixed(items, "out:")
        expected[#expected + 1] = 'out:{"device":"sensor-1","note":"say \\"hi\\""}'
        assert.same(expected, srv:lines("LRANGE", "s1:out", "0", "-1"))
    end)

    it("leaves a batch in flight pending when the driver is killed, delivers it after a "
       .. "restart, and not again once acknowledged", function()
        local items = seq("b", 1, 200)
        srv:pipe(xadds("s2", items))
        d:write_job("events", render(redis_server.STUCK_JOB, {
            name = q("events"), mode = q("stream"), url = q(srv.url), key = q("s2"),
            inflight = q(d:path("inflight.txt")), never = q(d:path("never")) }))
        d:start { conf = CONF }
        local stuck = d:wait_until(function()
            local l = d:file_lines("inflight.txt")
            return #l > 0 and l
        end, 10, 0.05, "a batch in flight")
        d:signal("KILL")
        d:wait_exit(5)
        local pending = srv:num("XPENDING", "s2", "ember-events")
        assert.is_true(pending >= #stuck, pending .. " pending, " .. #stuck .. " in flight")

        d:remove_job("events")
        d:write_job("events", render(DELIVER_JOB, { url = q(srv.url), key = q("s2"),
                                                    out = q("s2:out"), extra = "" }))
        d:start { conf = CONF }
        srv:wait_len(d, "s2:out", 200)
        wait_acked("s2", "ember-events")
        local out = srv:lines("LRANGE", "s2:out", "0", "-1")
        assert.same(prefixed(items, "out:"), sorted(out))
        -- pending entries come before new ones
        for i, v in ipairs(stuck) do
            assert.equal("out:" .. v, out[i])
        end

        d:signal("KILL")
        d:wait_exit(5)
        d:start { conf = CONF }
        srv:cli("XADD", "s2", "*", "value", "sentinel")
        srv:wait_len(d, "s2:out", 201)
        local expected = prefixed(items, "out:")
        expected[#expected + 1] = "out:sentinel"
        assert.same(sorted(expected), sorted(srv:lines("LRANGE", "s2:out", "0", "-1")))
    end)

    it("takes over the entries a dead consumer left pending once idle for claim_idle", function()
        local items = seq("c", 1, 100)
        srv:cli("XGROUP", "CREATE", "s3", "ember-events", "0", "MKSTREAM")
        srv:pipe(xadds("s3", items))
        -- another consumer reads 30 entries and dies without acknowledging them
        local taken = srv:lines("XREADGROUP", "GROUP", "ember-events", "dead", "COUNT", "30",
                                "STREAMS", "s3", ">")
        assert.is_true(#taken > 30)
        assert.equal(30, srv:num("XPENDING", "s3", "ember-events"))
        d:write_job("events", render(DELIVER_JOB, { url = q(srv.url), key = q("s3"),
                                                    out = q("s3:out"),
                                                    extra = ", claim_idle = '300ms'" }))
        d:start { conf = CONF }
        srv:wait_len(d, "s3:out", 100)
        wait_acked("s3", "ember-events")
        d:wait_for_log("took over 30 entries pending longer than claim_idle", 5)
        assert.same(prefixed(items, "out:"), sorted(srv:lines("LRANGE", "s3:out", "0", "-1")))
    end)
end)
