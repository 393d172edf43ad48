-- Event-time windows in a Kafka changelog (docs/scaling.md, "Event-time
-- windows and the watermark"), the parts that need no Kafka: which jobs a
-- changelog takes at load, the clock's watermark per partition, and the
-- windows closed and judged late by it, checked against plain-Lua models
-- on random input (partitions read, dropped and loaded again as a move
-- does, with what the changelog holds of them). The windows across drivers
-- are in spec/scale/kafka_changelog_window_spec.lua.

local H = require "spec.unit.support.helper"
local state = require "ember.state"
local event_time = require "ember.event_time"
local event_window = require "ember.event_window"

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


-- A tumbling count (size 1 s, emit final) as ember.event_window runs it on
-- a changelog store: records pushed with their partition and event time.
local function window_fixture(spec)
    local f = clock_fixture()
    local store = state.new({ name = "cw" }, { state_dir = dir })
    store.ops[event_time.CLOCK] = f.op
    store.order[1] = f.op
    local op = store:add("w", "event_window", "here")
    op.part = {}
    local node = { state_name = "w", where = "here", w_size = spec.size or 1000,
                   w_slide = spec.slide or spec.size or 1000, w_gap = spec.gap,
                   w_lateness = spec.lateness or 0, w_emit = spec.emit or "final",
                   w_late = "drop", agg = { kind = "count" } }
    local job = { interval_ms = 1000, nodes = { { op = "event_time", idle_ms = math.huge } } }
    local cur = -1
    f.ctx.partition = function() return cur end
    f.ctx.job = "cw"
    f.ctx.clock = f.clock
    local w = event_window.make(node, f.ctx, function() end, store, job)
    local out = {}
    -- one batch: records { p, key, t }; returns the windows emitted
    function f.batch(records)
        f.clock.reset()
        w.reset()
        for _, r in ipairs(records) do
            cur = r[1]
            f.clock.see(ch(r[1]), r[3])
            f.ctx.event_ts = r[3]
            w.push(r[2], 1)
        end
        f.ctx.time = f.ctx.time + 1000
        local rk, rv, rn = w.finish()
        f.clock.advance()
        for k, v in pairs(op.staged) do
            op.committed[k] = v ~= REMOVED and v or nil
        end
        for k in pairs(op.staged) do
            op.staged[k] = nil
        end
        f.commit()
        local got = {}
        for i = 1, rn do
            got[#got + 1] = rk[i] .. " " .. rv[i].start .. " " .. rv[i].value
        end
        table.sort(got)
        out[#out + 1] = got
        return got
    end
    -- what the changelog holds of partition p: the clock's and the windows'
    function f.drop_all(p)
        local clock_entries = f.drop(p)
        local wins = {}
        for k, o in pairs(op.part) do
            if o == p then
                wins[k] = op.committed[k]
                op.committed[k] = nil
                op.part[k] = nil
            end
        end
        op.reindex = true
        return { clock = clock_entries, wins = wins }
    end
    function f.load_all(p, saved)
        f.load(p, saved.clock)
        for k, v in pairs(saved.wins) do
            op.committed[k] = v
            op.part[k] = p
        end
        op.reindex = true
    end
    f.wop = op
    return f
end


describe("an event-time window with a changelog", function()
    it("closes each partition's windows by its own watermark, and judges its records late "
       .. "against it, after a move", function()
        local f = window_fixture {}
        f.assigned[0], f.assigned[1] = true, true
        assert.same({}, f.batch { { 0, "a", 500 }, { 1, "b", 700 }, { 0, "a", 900 } })
        -- both partitions pass 1 s: the windows [0, 1000) close
        assert.same({ "a 0 2", "b 0 1" }, f.batch { { 0, "a", 1200 }, { 1, "b", 1100 } })
        -- partition 0 goes ahead, then moves away with its window [1000, 2000)
        -- open and its watermark at 1100
        f.batch { { 0, "a", 1500 }, { 0, "a", 5000 } }
        assert.equal(1100, f.clock.watermark(0))
        local saved = f.drop_all(0)
        assert.same({ ["1000|sa"] = 2, ["5000|sa"] = 1 }, saved.wins)
        -- on this driver, partition 1 alone: its window [1000, 2000) closes
        assert.same({ "b 1000 1" }, f.batch { { 1, "b", 2100 } })
        -- partition 0 comes back (from the changelog): a record of its
        -- emitted window [0, 1000) is late (its watermark, 1100, came with
        -- it: without it the window would start again, and be emitted
        -- twice), and its open windows close once, by it
        f.load_all(0, saved)
        assert.equal(1100, f.clock.watermark(0))
        assert.same({ "a 1000 2", "b 2000 1" }, f.batch { { 0, "a", 800 }, { 1, "b", 9000 } })
        assert.equal(1, f.op.committed["late:100001"])
        assert.equal(nil, f.op.committed["late:100002"])
        assert.equal(5000, f.clock.watermark(0))
        assert.same({}, f.batch { { 0, "a", 5100 } })
        assert.same({ "a 5000 2" }, f.batch { { 0, "a", 8000 } })
    end)

    it("fails a record whose key's window state is another partition's", function()
        local f = window_fixture {}
        f.assigned[0], f.assigned[1] = true, true
        f.batch { { 0, "a", 500 } }
        local ok, err = pcall(f.batch, { { 1, "a", 600 } })
        assert.is_false(ok)
        assert.matches("event_window 'w' %(here%): key \"a\" came from partition 1 but its "
                       .. "window state lives with partition 0", err)
    end)

    it("counts as a plain-Lua model does across random moves (tumbling, sliding, session)",
       function()
        for _, spec in ipairs({ { size = 1000 }, { size = 2000, slide = 1000 },
                                { gap = 700 }, { size = 1000, lateness = 500 } }) do
            for seed = 1, 10 do
                math.randomseed(seed)
                local f = window_fixture(spec)
                local held, saved = { [0] = true, [1] = true, [2] = true }, {}
                for p in pairs(held) do
                    f.assigned[p] = true
                end
                local top = { [0] = 0, [1] = 0, [2] = 0 }
                local sent = {}                 -- key -> { event times }
                local got = {}                  -- "key start" -> count emitted
                local dups = {}
                local function take(list)
                    for _, line in ipairs(list) do
                        local k, start, n = line:match("^(%S+) (%-?%d+) (%d+)$")
                        assert(k, line)
                        local w = k .. " " .. start
                        if got[w] then
                            dups[#dups + 1] = w
                        end
                        got[w] = tonumber(n)
                    end
                end
                for _ = 1, 40 do
                    if math.random() < 0.2 then
                        local p = math.random(0, 2)
                        if held[p] then
                            saved[p] = f.drop_all(p)
                            held[p] = nil
                        elseif saved[p] then
                            f.load_all(p, saved[p])
                            held[p] = true
                        end
                    end
                    local recs = {}
                    for p in pairs(held) do
                        for _ = 1, math.random(0, 3) do
                            -- in order per partition: never late
                            top[p] = top[p] + math.random(0, 400)
                            local k = "k" .. p .. "_" .. math.random(1, 3)
                            recs[#recs + 1] = { p, k, top[p] }
                            sent[k] = sent[k] or {}
                            table.insert(sent[k], top[p])
                        end
                    end
                    take(f.batch(recs))
                end
                -- bring every partition back and far ahead: every window closes
                for p = 0, 2 do
                    if not held[p] and saved[p] then
                        f.load_all(p, saved[p])
                        held[p] = true
                    end
                end
                take(f.batch { { 0, "z0", 1000000 }, { 1, "z1", 1000000 }, { 2, "z2", 1000000 } })
                -- the model
                local want = {}
                for k, ts in pairs(sent) do
                    table.sort(ts)
                    if spec.gap then
                        local s, e, n = nil, nil, 0
                        for _, t in ipairs(ts) do
                            if s and t < e then
                                e, n = math.max(e, t + spec.gap), n + 1
                            else
                                if s then want[k .. " " .. s] = n end
                                s, e, n = t, t + spec.gap, 1
                            end
                        end
                        if s then want[k .. " " .. s] = n end
                    else
                        local size, slide = spec.size, spec.slide or spec.size
                        for _, t in ipairs(ts) do
                            local start = t - t % slide
                            while start > t - size do
                                local w = k .. " " .. start
                                want[w] = (want[w] or 0) + 1
                                start = start - slide
                            end
                        end
                    end
                end
                for w in pairs(got) do
                    if w:match("^z") then
                        got[w] = nil
                    end
                end
                assert.same({}, dups, "emitted twice")
                assert.same(want, got, "seed " .. seed)
            end
        end
    end)
end)
