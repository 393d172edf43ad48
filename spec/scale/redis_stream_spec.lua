-- Scale-out over a Redis stream consumer group: three drivers on one group,
-- each its own consumer (ember-<ember.id>-<job>). Entries go to whichever
-- consumer asks first; a dead consumer's pending entries (read, never
-- acknowledged) are taken over by the others once idle for claim_idle
-- (XAUTOCLAIM). A graceful stop acknowledges everything it read; a new
-- consumer simply starts asking.

local driver = require "support.driver"
local redis_server = require "support.redis_server"
local group = require "support.group"

local JOB = [[
local ember = require "ember"
{{slow_head}}local job = ember.job { name = "member", batch_interval = "500ms" }

job:redis { url = {{url}}, mode = "stream", key = "events", group = "scale",
            claim_idle = "2s", max_rate = 400 }
   :foreach_batch(function(records, info)
       if #records == 0 then return end
       local f = assert(io.open({{out}}, "a"))
       for _, v in ipairs(records) do f:write(v, "\t", info.time, "\n") end
       f:close()
       {{slow}}
   end)

return job
]]

describe("three drivers on one Redis stream consumer group", function()
    local srv, g

    setup(function()
        srv = redis_server.start()
        g = group.new {
            job = function(out)
                return driver.render(JOB, { url = driver.quote(srv.url), out = driver.quote(out),
                                            slow_head = group.SLOW_HEAD, slow = driver.render(group.SLOW, { out = driver.quote(out) }) })
            end,
            produce = function(values)
                local cmds = {}
                for i, v in ipairs(values) do
                    cmds[i] = { "XADD", "events", "*", "value", v }
                end
                srv:pipe(cmds)
            end,
            ready = "redis source .-: connected",
            settle = function()
                driver.wait_until(function()
                    local summary = srv:lines("XPENDING", "events", "scale")
                    return summary[1] == "0", table.concat(summary, " ")
                end, 30, 0.1, "no entry pending in the group")
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

    it("reads as three consumers, one per driver, each record once", function()
        local r = g:round("spread", { n = 1200 })
        group.report("redis", r)
        assert.equal(0, r.lost)
        assert.equal(0, r.duplicated, r.text)
        for i = 1, 3 do
            assert(r.per_member[i] and r.per_member[i] > 0, "member " .. i .. " read nothing: "
                   .. r.text)
        end
        local consumers = srv:lines("XINFO", "CONSUMERS", "events", "scale")
        local names = {}
        for i, l in ipairs(consumers) do
            if l == "name" then
                names[#names + 1] = consumers[i + 1]
            end
        end
        assert.equal(3, #names, table.concat(consumers, " "))
        for _, name in ipairs(names) do
            assert.truthy(name:find("^ember%-vm?.*%-member$") or name:find("^ember%-.+%-member$"),
                          name)
        end
    end)

    it("takes over a killed member's pending entries within claim_idle, losing none", function()
        local r = g:round("kill", { victim = g.members[1], n = 2400 })
        group.report("redis", r)
        assert.equal(0, r.lost)
        -- at most the dead member's last batch: processed, never acknowledged
        assert(r.victim_last > 0, r.text)
        assert(r.duplicated <= r.victim_last, r.text .. "; the dead member's last batch held "
               .. r.victim_last)
        -- claim_idle (2 s) plus one scan period (1 s) plus reading
        assert(r.seconds < 15, r.text)
        -- (the round waited until nothing was pending in the group: the dead
        -- consumer's entries were claimed and acknowledged by the living)
        assert(r.settled < 15, r.text)
    end)

    it("duplicates nothing when a member stops gracefully", function()
        local r = g:round("stop", { victim = g.members[2], n = 1200 })
        group.report("redis", r)
        assert.equal(0, r.lost)
        assert.equal(0, r.duplicated, r.text)
        assert(r.seconds < 15, r.text)
    end)

    it("duplicates nothing when a member joins, and the new member reads", function()
        local r = g:round("join", { n = 1200 })
        group.report("redis", r)
        assert.equal(0, r.lost)
        assert.equal(0, r.duplicated, r.text)
        assert(r.seconds < 15, r.text)
        assert(r.per_member[r.joined.index], "the new member read nothing: " .. r.text)
    end)
end)
