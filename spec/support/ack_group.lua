-- support.ack_group: the scale-out scenarios of a source that acknowledges
-- each record to its broker (a Redis stream consumer group,
-- spec/scale/redis_stream_spec.lua; a RabbitMQ queue, rabbitmq_spec.lua):
-- three drivers as competing consumers, then a kill -9, a graceful stop and
-- a join. What is read and never acknowledged comes again (a dead member's
-- last batch); nothing else may be lost or read twice.
--
--   require("support.ack_group").scenarios(
--       { describe = describe, it = it, setup = setup, teardown = teardown }, {
--       title = "three drivers ...",           -- the describe block
--       label = "redis",                       -- for group.report
--       start = function() return srv end,     -- the broker (srv:stop() in teardown)
--       source = function(srv) return 'job:redis { ... }' end, -- the source's Lua
--       value = "v",                           -- Lua: what the job writes of record v
--       produce = function(srv, values) end,   -- into the shared stream / queue
--       ready = "log pattern: a member takes part",
--       settle = function(srv) end,            -- waits until nothing is unacknowledged
--       consumers = function(srv) return names end, -- the consumer names the broker lists
--       names = { spread = "...", kill = "...", stop = "...", join = "..." }, -- the its
--       join_n = 1200,                         -- records of the join round
--       kill_settled = 15,                     -- optional: bound on the kill round's settle
--   })
--
-- Both sources keep every record unacknowledged until its batch is done, so
-- the bounds are the same for both: no duplicates but the dead member's last
-- batch, every record read within 15 s of the change (docs/scaling.md has
-- the figures).

local driver = require "support.driver"
local group = require "support.group"
local assert = require "luassert"

local ipairs = ipairs
local table_concat = table.concat

local _M = {}

local JOB = [[
local ember = require "ember"
{{slow_head}}local job = ember.job { name = "member", batch_interval = "500ms" }

{{source}}
   :foreach_batch(function(records, info)
       if #records == 0 then return end
       local f = assert(io.open({{out}}, "a"))
       for _, v in ipairs(records) do f:write({{value}}, "\t", info.time, "\n") end
       f:close()
       {{slow}}
   end)

return job
]]

-- Defines the describe block. bt: busted's describe, it, setup, teardown of
-- the calling spec file (they live in its environment, not in _G).
function _M.scenarios(bt, o)
    local describe, it, setup, teardown = bt.describe, bt.it, bt.setup, bt.teardown
    describe(o.title, function()
        local srv, g

        setup(function()
            srv = o.start()
            g = group.new {
                job = function(out)
                    return driver.render(JOB, {
                        source = o.source(srv), value = o.value, out = driver.quote(out),
                        slow_head = group.SLOW_HEAD,
                        slow = driver.render(group.SLOW, { out = driver.quote(out) }),
                    })
                end,
                produce = function(values) o.produce(srv, values) end,
                ready = o.ready,
                settle = function() o.settle(srv) end,
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

        it(o.names.spread, function()
            local r = g:round("spread", { n = 1200 })
            group.report(o.label, r)
            assert.equal(0, r.lost)
            assert.equal(0, r.duplicated, r.text)
            for i = 1, 3 do
                assert(r.per_member[i] and r.per_member[i] > 0, "member " .. i .. " read nothing: "
                       .. r.text)
            end
            -- one consumer per driver, named ember-<ember.id>-<job>
            local names = o.consumers(srv)
            assert.equal(3, #names, table_concat(names, " "))
            for _, name in ipairs(names) do
                assert.truthy(name:find("^ember%-.+%-member$"), name)
            end
        end)

        it(o.names.kill, function()
            local r = g:round("kill", { victim = g.members[1], n = 2400 })
            group.report(o.label, r)
            assert.equal(0, r.lost)
            -- at most the dead member's last batch: processed, never acknowledged
            assert(r.victim_last > 0, r.text)
            assert(r.duplicated <= r.victim_last, r.text .. "; the dead member's last batch held "
                   .. r.victim_last)
            assert(r.seconds < 15, r.text)
            -- (the round waited until the broker held nothing unacknowledged:
            -- the dead consumer's records were read and acknowledged by the
            -- living)
            if o.kill_settled then
                assert(r.settled < o.kill_settled, r.text)
            end
        end)

        it(o.names.stop, function()
            local r = g:round("stop", { victim = g.members[2], n = 1200 })
            group.report(o.label, r)
            assert.equal(0, r.lost)
            assert.equal(0, r.duplicated, r.text)
            assert(r.seconds < 15, r.text)
        end)

        it(o.names.join, function()
            local r = g:round("join", { n = o.join_n or 1200 })
            group.report(o.label, r)
            assert.equal(0, r.lost)
            assert.equal(0, r.duplicated, r.text)
            assert(r.seconds < 15, r.text)
            assert(r.per_member[r.joined.index], "the new member read nothing: " .. r.text)
        end)
    end)
end

return _M
