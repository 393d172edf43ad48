-- support.kafka_group: the Kafka scale-out scenarios, run once per
-- rebalance protocol (spec/scale/kafka_eager_spec.lua and
-- kafka_cooperative_spec.lua): three drivers in one consumer group on
-- librdkafka's mock cluster, then a kill -9, a graceful stop and a join.
--
-- The mock's coordinator waits session.timeout.ms minus one second at every
-- membership change before it forms the new generation, and refuses offset
-- commits from the moment a change begins until that generation is up (a
-- real broker takes commits of the current generation until the members
-- have rejoined). So here a kill -9 takes the session timeout (3 s) plus
-- 2 s, a stop or a join 2 s, plus reading; and with the eager protocol the
-- batches the survivors finished after a change began are read again where
-- their partitions moved. docs/scaling.md has the figures.

local driver = require "support.driver"
local kafka_mock = require "support.kafka_mock"
local group = require "support.group"
local assert = require "luassert"

local _M = {}

-- EMBER_SCALE_DEFAULTS=1 runs the members with ember's own group settings
-- (session.timeout.ms 6000, heartbeat.interval.ms 1000) instead of the
-- suite's short ones, for the figures in docs/scaling.md: slower, not part
-- of `make test`. There the mock sometimes needs two or three generations
-- for one change (5 s each), and a survivor that loses its assignment in
-- between cannot commit: survivors' duplicates are only reported.
local DEFAULTS = os.getenv("EMBER_SCALE_DEFAULTS") == "1"
local CLIENT = DEFAULTS and '["kafka.fetch.wait.max.ms"] = 10' or kafka_mock.CLIENT

local JOB = [[
local ember = require "ember"
{{slow_head}}local job = ember.job { name = "member", batch_interval = "500ms" }

job:kafka { brokers = {{b}}, topic = "events", group = "scale", start = "earliest",
            max_rate_per_partition = 100,
            ["kafka.partition.assignment.strategy"] = {{strategy}}, {{client}} }
   :foreach_batch(function(records, info)
       if #records == 0 then return end
       local f = assert(io.open({{out}}, "a"))
       for _, v in ipairs(records) do f:write(v, "\t", info.time, "\n") end
       f:close()
       {{slow}}
   end)

return job
]]

-- Defines the describe block for one protocol: "range,roundrobin" (eager)
-- or "cooperative-sticky". bt: busted's describe, it, setup, teardown of
-- the calling spec file (they live in its environment, not in _G).
-- bounds: the duplicates the mock may add to a kill (beyond the dead
-- member's last batch), a stop and a join, by refusing survivors' commits
-- (see the top of this file); 0 asserts none.
function _M.scenarios(bt, label, strategy, bounds)
    local describe, it, setup, teardown = bt.describe, bt.it, bt.setup, bt.teardown
    if DEFAULTS then
        bounds = { kill = 1e9, stop = 1e9, join = 1e9 }
    end
    describe("three drivers in one Kafka consumer group (" .. label .. ")", function()
        local mock, g

        setup(function()
            mock = kafka_mock.start { topics = { "events:12" } }
            g = group.new {
                job = function(out)
                    return driver.render(JOB, { b = driver.quote(mock.bootstrap),
                                                strategy = driver.quote(strategy),
                                                client = CLIENT,
                                                out = driver.quote(out),
                                            slow_head = group.SLOW_HEAD, slow = driver.render(group.SLOW, { out = driver.quote(out) }) })
                end,
                produce = function(values) mock:produce("events", values) end,
                ready = "assigned events%[",
                conf = { ["streaming.blockInterval"] = "100ms" },
            }
            g:add(false)
            g:add(false)
            g:add(false)
        end)

        teardown(function()
            if g then g:stop() end
            if mock then mock:stop() end
        end)

        it("spreads the records over all three, each read once", function()
            -- wait until the group has settled on three members
            for _, d in ipairs(g.members) do
                d:wait_for_log("assigned events%[", 60)
            end
            local r = g:round("spread", { n = 1200 })
            group.report(label, r)
            assert.equal(0, r.lost)
            assert.equal(0, r.duplicated, r.text)
            for i = 1, 3 do
                assert(r.per_member[i] and r.per_member[i] > 0, "member " .. i .. " read nothing: "
                       .. r.text)
            end
        end)

        it("loses nothing when a member is killed, and reads its partitions again within seconds",
           function()
            local r = g:round("kill", { victim = g.members[1], n = 2400 })
            group.report(label, r)
            assert.equal(0, r.lost)
            -- at most the dead member's batches it had not committed: the
            -- one it died in, and any whose commit the mock refused (plus,
            -- eager on the mock, what survivors could not commit)
            assert(r.victim_last > 0, r.text)
            assert(r.duplicated <= r.victim_uncommitted + bounds.kill, r.text)
            assert(r.seconds < (DEFAULTS and 40 or 20), r.text)
        end)

        it("loses nothing when a member stops gracefully" .. (bounds.stop == 0
               and " and duplicates nothing" or ""), function()
            local r = g:round("stop", { victim = g.members[2], n = 1200 })
            group.report(label, r)
            assert.equal(0, r.lost)
            assert(r.duplicated <= bounds.stop, r.text)
            assert.truthy(g.members[2]:log():find("revoked events%[.-after %d+ms"))
            assert(r.seconds < (DEFAULTS and 30 or 15), r.text)
        end)

        it("loses nothing when a member joins" .. (bounds.join == 0
               and " and duplicates nothing" or "") .. "; the new member reads", function()
            local r = g:round("join", { n = 1200 })
            group.report(label, r)
            assert.equal(0, r.lost)
            assert(r.duplicated <= bounds.join, r.text)
            assert(r.seconds < (DEFAULTS and 30 or 15), r.text)
            r.joined:wait_for_log("assigned events%[", 30)
            -- the newcomer takes part: records produced now reach it too
            local r2 = g:round("spread", { n = 600 })
            group.report(label, r2)
            assert.equal(0, r2.duplicated, r2.text)
            assert(r2.per_member[r.joined.index], "the new member read nothing: " .. r2.text)
        end)
    end)
end

return _M
