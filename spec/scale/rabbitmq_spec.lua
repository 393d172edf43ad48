-- Scale-out over one RabbitMQ queue: three drivers as competing consumers,
-- each consumer tagged ember-<ember.id>-<job>. The broker spreads messages
-- over them within each one's prefetch window; when a driver dies its
-- connection closes and the broker requeues what it had not acknowledged,
-- for the others to read at once. A graceful stop acknowledges everything it
-- read; a new consumer simply gets its share.

local driver = require "support.driver"
local rabbit = require "support.rabbitmq_server"
local group = require "support.group"

local JOB = [[
local ember = require "ember"
{{slow_head}}local job = ember.job { name = "member", batch_interval = "500ms" }

job:rabbitmq { url = {{url}}, queue = "events", max_rate = 400 }
   :foreach_batch(function(records, info)
       if #records == 0 then return end
       local f = assert(io.open({{out}}, "a"))
       for _, v in ipairs(records) do f:write((v:gsub("\n$", "")), "\t", info.time, "\n") end
       f:close()
       {{slow}}
   end)

return job
]]

describe("three drivers consuming one RabbitMQ queue", function()
    local srv, g

    setup(function()
        srv = rabbit.start()
        srv:declare("events")
        g = group.new {
            job = function(out)
                return driver.render(JOB, { url = driver.quote(srv.url), out = driver.quote(out),
                                            slow_head = group.SLOW_HEAD, slow = driver.render(group.SLOW, { out = driver.quote(out) }) })
            end,
            produce = function(values) srv:publish("events", values) end,
            ready = "connected; consuming",
            settle = function()
                srv:wait_queue("events", function(q) return q and q.ready == 0 and q.unacked == 0 end,
                               30, "every message acknowledged")
            end,
            conf = { ["streaming.blockInterval"] = "100ms" },
        }
        for _ = 1, 3 do
            g:add()
        end
    end)

    teardown(function()
        if g then g:stop() end
        if srv then srv:stop() end
    end)

    it("spreads the messages over all three, each read once", function()
        local r = g:round("spread", { n = 1200 })
        group.report("rabbitmq", r)
        assert.equal(0, r.lost)
        assert.equal(0, r.duplicated, r.text)
        for i = 1, 3 do
            assert(r.per_member[i] and r.per_member[i] > 0, "member " .. i .. " read nothing: "
                   .. r.text)
        end
        local out = srv:ctl("list_consumers consumer_tag")
        local n = 0
        for tag in out:gmatch("ember%-[%w._-]+%-member") do
            n = n + 1
        end
        assert.equal(3, n, out)
    end)

    it("redelivers a killed member's unacknowledged messages to the others at once", function()
        local r = g:round("kill", { victim = g.members[1], n = 2400 })
        group.report("rabbitmq", r)
        assert.equal(0, r.lost)
        -- at most the dead member's last batch: processed, never acknowledged
        assert(r.victim_last > 0, r.text)
        assert(r.duplicated <= r.victim_last, r.text .. "; the dead member's last batch held "
               .. r.victim_last)
        assert(r.seconds < 15, r.text)
    end)

    it("duplicates nothing when a member stops gracefully", function()
        local r = g:round("stop", { victim = g.members[2], n = 1200 })
        group.report("rabbitmq", r)
        assert.equal(0, r.lost)
        assert.equal(0, r.duplicated, r.text)
        assert(r.seconds < 15, r.text)
    end)

    it("duplicates nothing when a member joins, and the new member reads", function()
        local r = g:round("join", { n = 2400 })
        group.report("rabbitmq", r)
        assert.equal(0, r.lost)
        assert.equal(0, r.duplicated, r.text)
        assert(r.seconds < 15, r.text)
        assert(r.per_member[r.joined.index], "the new member read nothing: " .. r.text)
    end)
end)
