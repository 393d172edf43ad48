-- Event-time windows in a Kafka changelog (docs/scaling.md, "Event-time
-- windows and the watermark"), the parts that need no Kafka: which jobs a
-- changelog takes at load, and the clock's watermark per partition, checked
-- against a plain-Lua model on random input (partitions read, moved to and
-- from the driver). The windows across drivers are in
-- spec/scale/kafka_changelog_window_spec.lua.

local H = require "spec.unit.support.helper"
local state = require "ember.state"
local event_time = require "ember.event_time"

local REMOVED = state.REMOVED

local dir

before_each(function()
    dir = H.tmpdir()
end)

after_each(function()
    H.rm_rf(dir)
end)


local HEAD = [[
local ember = require "ember"
local job = ember.job { name = "cw" }
local ev = job:kafka { brokers = "127.0.0.1:1", topic = "events", group = "g", format = "record",
                       changelog = true }
   :event_time(function(r) return tonumber(r.value) end)
   :map(function(r) return r.key, 1 end)
]]

local function load(body)
    return H.load(dir, HEAD .. body .. "\nreturn job\n", "job")
end


describe("a changelog job with event-time windows", function()
    it("loads tumbling, sliding and session windows, final and update", function()
        local desc, err = load([[
ev:event_window { size = "3s", name = "t" }:count():print()
ev:event_window { size = "4s", slide = "2s", emit = "update", name = "s" }:count():print()
ev:event_window { gap = "5s", name = "g" }:reduce(function(a, b) return a + b end):print()
]])
        assert.is_nil(err)
        assert.truthy(desc)
    end)

    it("still refuses a processing-time window, naming it", function()
        local _, err = load([[
ev:event_window { size = "3s" }:count():print()
ev:reduce_by_key_and_window(function(a, b) return a + b end, "2s"):print()
]])
        assert.matches("changelog = true: reduce_by_key_and_window '.-' %(.-job%.lua:8%) keeps "
                       .. "state the changelog does not carry yet", err)
    end)

    it("still refuses a second source", function()
        local _, err = load([[
local other = job:generator {}:map(function(s) return { key = s, value = "0" } end)
   :event_time(function(r) return 0 end):map(function(r) return r.key, 1 end)
ev:union(other):event_window { size = "3s" }:count():print()
]])
        assert.matches("the Kafka source must be the job's only source", err)
    end)
end)


-- A store with the clock as state_changelog.attach leaves it (op.part), and
-- a ctx whose assignment the spec sets.
local function clock_fixture()
    local store = state.new({ name = "cw" }, { state_dir = dir })
    local op = store:add(event_time.CLOCK, "event_time", "here")
    op.part = {}
    local assigned = {}
    local ctx = { time = 0 }
    function ctx.each_assigned(fn)
        for p in pairs(assigned) do
            fn(1, p)
        end
    end
    local job = { interval_ms = 1000,
                  nodes = { { op = "event_time", idle_ms = math.huge } } }
    local clock = event_time.clock(ctx, store, job)
    -- the commit: staged to committed
    local function commit()
        for k, v in pairs(op.staged) do
            op.committed[k] = v ~= REMOVED and v or nil
        end
        for k in pairs(op.staged) do
            op.staged[k] = nil
        end
    end
    -- what a revoke drops and what a restore of partition p loads
    local function drop(p)
        local out = {}
        for k, o in pairs(op.part) do
            if o == p then
                out[k] = op.committed[k]
                op.committed[k] = nil
                op.part[k] = nil
            end
        end
        assigned[p] = nil
        return out
    end
    local function load(p, entries)
        for k, v in pairs(entries) do
            op.committed[k] = v
            op.part[k] = p
        end
        assigned[p] = true
    end
    return { clock = clock, op = op, ctx = ctx, assigned = assigned, commit = commit,
             drop = drop, load = load }
end

local function ch(p)
    return 100001 + p
end


describe("the event-time clock with a changelog", function()
    it("keeps a watermark per partition, in that partition", function()
        local f = clock_fixture()
        f.assigned[0], f.assigned[1] = true, true
        f.clock.reset()
        f.clock.see(ch(0), 5000)
        f.clock.see(ch(1), 3000)
        f.ctx.time = 1000
        assert.equal(3000, f.clock.advance())
        f.commit()
        assert.same({ ["max:100001"] = 5000, ["max:100002"] = 3000, ["wm:100001"] = 3000,
                      ["wm:100002"] = 3000, ["idle:100001"] = nil }, f.op.committed)
        assert.same({ ["max:100001"] = 0, ["max:100002"] = 1, ["wm:100001"] = 0,
                      ["wm:100002"] = 1 }, f.op.part)
        -- partition 2 comes, behind, with the watermark its last owner left
        f.load(2, { ["max:100003"] = 1000, ["wm:100003"] = 800 })
        f.clock.reset()
        f.clock.see(ch(0), 6000)
        f.clock.see(ch(1), 6000)
        f.ctx.time = 2000
        assert.equal(1000, f.clock.advance())   -- the lowest went back: partition 2's
        f.commit()
        assert.equal(3000, f.clock.watermark(0))
        assert.equal(3000, f.clock.watermark(1))
        assert.equal(1000, f.clock.watermark(2))
        assert.equal(3000, f.clock.highest())
        -- late records count per partition
        f.clock.reset()
        f.clock.late(2, 2)
        f.clock.late(1, 0)
        f.commit()
        assert.equal(2, f.op.committed["late:100003"])
        assert.equal(2, f.op.part["late:100003"])
        assert.equal(3, event_time.late_total(f.op, true))
    end)

    it("moves each partition's watermark as a model does, never back, across moves", function()
        for seed = 1, 30 do
            math.randomseed(seed)
            local f = clock_fixture()
            -- the model: partition -> { max =, wm = } as the changelog has it
            local cl = {}
            local held = {}
            local top = {}                      -- partition -> event time produced so far
            for p = 0, 5 do
                top[p] = 0
            end
            for p = 0, 2 do
                f.load(p, {})
                held[p] = true
            end
            for step = 1, 60 do
                local r = math.random()
                if r < 0.15 then
                    -- a partition leaves this driver, or comes (from the changelog)
                    local p = math.random(0, 5)
                    if held[p] then
                        local out = f.drop(p)
                        cl[p] = { max = out["max:" .. ch(p)], wm = out["wm:" .. ch(p)] }
                        held[p] = nil
                    else
                        local e = cl[p] or {}
                        -- elsewhere it was read further, its watermark moved on
                        if e.max and math.random() < 0.5 then
                            e.max = e.max + math.random(0, 3000)
                            e.wm = math.max(e.wm or -math.huge, e.max - math.random(0, 2000))
                            top[p] = math.max(top[p], e.max)
                        end
                        f.load(p, { ["max:" .. ch(p)] = e.max, ["wm:" .. ch(p)] = e.wm })
                        held[p] = true
                    end
                else
                    -- a batch: some held partitions deliver records
                    f.clock.reset()
                    local model_max = {}
                    for p in pairs(held) do
                        model_max[p] = f.op.committed["max:" .. ch(p)]
                        if math.random() < 0.7 then
                            local t = top[p] + math.random(0, 2000)
                            top[p] = t
                            f.clock.see(ch(p), t)
                            model_max[p] = math.max(model_max[p] or -math.huge, t)
                        end
                    end
                    local lo = math.huge
                    for p in pairs(held) do
                        lo = math.min(lo, model_max[p] or -math.huge)
                    end
                    local before = {}
                    for p in pairs(held) do
                        before[p] = f.clock.watermark(p)
                    end
                    f.ctx.time = f.ctx.time + 1000
                    f.clock.advance()
                    f.commit()
                    local want_lowest = math.huge
                    for p in pairs(held) do
                        local want = before[p]
                        if lo > -math.huge and lo > want then
                            want = lo
                        end
                        assert.equal(want, f.clock.watermark(p), "seed " .. seed .. " step " .. step
                                     .. " partition " .. p)
                        assert.is_true(f.clock.watermark(p) <= (model_max[p] or -math.huge)
                                       or f.clock.watermark(p) == before[p],
                                       "a partition's watermark past its own event time")
                        if want > -math.huge then  -- a partition with a watermark
                            want_lowest = math.min(want_lowest, want)
                        end
                        -- every entry of the partition is the partition's
                        for k, o in pairs(f.op.part) do
                            if k:match(":(%d+)$") == tostring(ch(p)) then
                                assert.equal(p, o)
                            end
                        end
                    end
                    assert.equal(want_lowest == math.huge and -math.huge or want_lowest,
                                 f.clock.watermark())
                end
            end
        end
    end)
end)
