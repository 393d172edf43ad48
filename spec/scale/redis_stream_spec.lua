-- Scale-out over a Redis stream consumer group: three drivers on one group,
-- each its own consumer (ember-<ember.id>-<job>). Entries go to whichever
-- consumer asks first; a dead consumer's pending entries (read, never
-- acknowledged) are taken over by the others once idle for claim_idle
-- (XAUTOCLAIM): after a kill -9 every entry is read within claim_idle (2 s)
-- plus one scan period (1 s) plus reading. A graceful stop acknowledges
-- everything it read; a new consumer simply starts asking. The scenarios
-- and their bounds are in support/ack_group.lua.

local driver = require "support.driver"
local redis_server = require "support.redis_server"

require("support.ack_group").scenarios({ describe = describe, it = it, setup = setup,
                                         teardown = teardown }, {
    title = "three drivers on one Redis stream consumer group",
    label = "redis",
    start = function() return redis_server.start() end,
    source = function(srv)
        return 'job:redis { url = ' .. driver.quote(srv.url) .. ', mode = "stream", '
               .. 'key = "events", group = "scale",\n'
               .. '            claim_idle = "2s", max_rate = 400 }'
    end,
    value = "v",
    produce = function(srv, values)
        local cmds = {}
        for i, v in ipairs(values) do
            cmds[i] = { "XADD", "events", "*", "value", v }
        end
        srv:pipe(cmds)
    end,
    ready = "redis source .-: connected",
    settle = function(srv)
        driver.wait_until(function()
            local summary = srv:lines("XPENDING", "events", "scale")
            return summary[1] == "0", table.concat(summary, " ")
        end, 30, 0.1, "no entry pending in the group")
    end,
    consumers = function(srv)
        local reply, names = srv:lines("XINFO", "CONSUMERS", "events", "scale"), {}
        for i, l in ipairs(reply) do
            if l == "name" then
                names[#names + 1] = reply[i + 1]
            end
        end
        return names
    end,
    names = {
        spread = "reads as three consumers, one per driver, each record once",
        kill = "takes over a killed member's pending entries within claim_idle, losing none",
        stop = "duplicates nothing when a member stops gracefully",
        join = "duplicates nothing when a member joins, and the new member reads",
    },
    join_n = 1200,
    kill_settled = 15,
})
