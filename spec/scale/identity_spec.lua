-- A driver's identity among the drivers sharing a group: ember.id names it in
-- every log line and in the brokers (Kafka client.id and, with
-- static_membership, group.instance.id; Redis stream consumer names;
-- RabbitMQ consumer tags), and checkpoint.dir belongs to one driver at a
-- time.

local driver = require "support.driver"
local redis_server = require "support.redis_server"

local IDLE_JOB = [[
local ember = require "ember"
local job = ember.job { name = "idle" }
job:generator { kind = "sequence", count = 1 }:count():print()
return job
]]

describe("driver identity", function()
    local a, b

    after_each(function()
        if a then a:stop() end
        if b then b:stop() end
        a, b = nil, nil
    end)

    it("refuses a second driver on a checkpoint.dir in use, naming the first", function()
        a = driver.new()
        a:write_job("idle.lua", IDLE_JOB)
        a:start { conf = driver.conf { ["ember.id"] = "first" } }
        a:wait_for_log("holds checkpoint.dir", 20)

        b = driver.new()
        b:write_job("idle.lua", IDLE_JOB)
        b:start { conf = driver.conf { ["checkpoint.dir"] = a.checkpoint_dir,
                                       ["ember.id"] = "second" } }
        assert.equal(2, b:wait_exit(20))
        local msg = b:log()
        assert.truthy(msg:find("checkpoint.dir = '" .. a.checkpoint_dir .. "' is in use by another "
                               .. "driver (pid " .. a.pid .. ", ember.id first)", 1, true), msg)
        assert(a:running(), "the first driver must keep running")

        -- a kill -9 frees the folder: the kernel drops the lock with the process
        a:signal("KILL")
        a:wait_exit(10)
        b:start { conf = driver.conf { ["checkpoint.dir"] = a.checkpoint_dir,
                                       ["ember.id"] = "second" } }
        b:wait_for_log("driver second %(pid %d+%) holds checkpoint.dir", 20)
    end)

    it("names the driver on every log line; the default differs per checkpoint.dir", function()
        a = driver.new()
        a:write_job("idle.lua", IDLE_JOB)
        a:start { conf = driver.conf { ["ember.id"] = "web-1.east" } }
        a:wait_for_log("started from", 20)
        for _, line in ipairs(driver.lines(a:log())) do
            if line:find("^%d%d%d%d%-") then
                assert.truthy(line:find("^%S+Z web%-1%.east %a+ +%["), line)
            end
        end

        b = driver.new()
        b:write_job("idle.lua", IDLE_JOB)
        b:start()
        local line = b:wait_for_log("holds checkpoint.dir", 20)
        local id = tostring(line):match("driver (%S+) %(pid")
        assert.truthy(id and id:find("^[%w_-]+%-%x%x%x%x%x%x%x%x$"), tostring(line))
        b:signal("TERM")
        assert.equal(0, b:wait_exit(20))
        -- the same folder gives the same id again; another folder another one
        b:start()
        local again = b:wait_for_log("holds checkpoint.dir", 20)
        assert.equal(id, tostring(again):match("driver (%S+) %(pid"))
        local c = driver.new()
        c:write_job("idle.lua", IDLE_JOB)
        c:start()
        local other = c:wait_for_log("holds checkpoint.dir", 20)
        local other_id = tostring(other):match("driver (%S+) %(pid")
        c:stop()
        assert.are_not.equal(id, other_id)
    end)

    it("refuses an ember.id a broker would not take, naming the key", function()
        a = driver.new()
        a:write_job("idle.lua", IDLE_JOB)
        a:start { conf = driver.conf { ["ember.id"] = "two words" } }
        assert.equal(2, a:wait_exit(20))
        assert.truthy(a:log():find("ember.id = 'two words' must be 1-64 letters, digits", 1, true),
                      a:log())
    end)

    it("names the Redis stream consumer after the driver", function()
        local srv = redis_server.start()
        local ok, err = pcall(function()
            a = driver.new()
            a:write_job("reader.lua", driver.render([[
local ember = require "ember"
local job = ember.job { name = "reader" }
job:redis { url = {{url}}, mode = "stream", key = "s", group = "g" }:print()
return job
]], { url = driver.quote(srv.url) }))
            a:start { conf = driver.conf { ["ember.id"] = "node-7" } }
            a:wait_for_log("redis source .-: connected", 20)
            srv:cli("XADD", "s", "*", "value", "x")
            driver.wait_until(function()
                local out = srv:lines("XINFO", "CONSUMERS", "s", "g")
                for i, l in ipairs(out) do
                    if l == "name" and out[i + 1] == "ember-node-7-reader" then
                        return true
                    end
                end
                return false, table.concat(out, " ")
            end, 20, 0.05, "consumer ember-node-7-reader in group g")
        end)
        srv:stop()
        assert(ok, err)
    end)
end)
