-- Scale-out over one RabbitMQ queue: three drivers as competing consumers,
-- each consumer tagged ember-<ember.id>-<job>. The broker spreads messages
-- over them within each one's prefetch window; when a driver dies its
-- connection closes and the broker requeues what it had not acknowledged,
-- for the others to read at once. A graceful stop acknowledges everything it
-- read; a new consumer simply gets its share. The scenarios and their
-- bounds are in support/ack_group.lua.

local driver = require "support.driver"
local rabbit = require "support.rabbitmq_server"

require("support.ack_group").scenarios({ describe = describe, it = it, setup = setup,
                                         teardown = teardown }, {
    title = "three drivers consuming one RabbitMQ queue",
    label = "rabbitmq",
    start = function()
        local srv = rabbit.start()
        srv:declare("events")
        return srv
    end,
    source = function(srv)
        return 'job:rabbitmq { url = ' .. driver.quote(srv.url) .. ', queue = "events", '
               .. 'max_rate = 400 }'
    end,
    value = '(v:gsub("\\n$", ""))',
    produce = function(srv, values) srv:publish("events", values) end,
    ready = "connected; consuming",
    settle = function(srv)
        srv:wait_queue("events", function(q) return q and q.ready == 0 and q.unacked == 0 end,
                       30, "every message acknowledged")
    end,
    consumers = function(srv)
        local names = {}
        for tag in srv:ctl("list_consumers consumer_tag"):gmatch("ember%-[%w._-]+%-member") do
            names[#names + 1] = tag
        end
        return names
    end,
    names = {
        spread = "spreads the messages over all three, each read once",
        kill = "redelivers a killed member's unacknowledged messages to the others at once",
        stop = "duplicates nothing when a member stops gracefully",
        join = "duplicates nothing when a member joins, and the new member reads",
    },
    join_n = 2400,
})
