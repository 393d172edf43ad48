-- An oracle for event-time windows: random streams from two sources, one
-- of them with two Kafka-like partitions, with out-of-order event times,
-- records far behind the watermark, sources that go quiet for a while
-- (idle), empty batches and gaps in batch times, go through tumbling,
-- sliding and session windows (count, reduce, aggregate; final and update
-- emission), and every batch's windows and late records are compared with
-- a plain-Lua model that keeps the accepted records and recomputes each
-- window from them. The driver's life is played at random on the way, as
-- in state_oracle_spec.lua: aborted runs, a process that died after
-- prepare, a fresh load restored from the files.

local H = require "spec.unit.support.helper"


local JOB = [[
local ember = require "ember"
local out = require("test_sink").out
local job = ember.job { name = "ev", batch_interval = "1s" }
local function parse(s)
    local k, t, v = s:match("^(%w+)@(%d+):(%d+)$")
    return { k = k, t = tonumber(t), v = tonumber(v) }
end
local a = job:generator {}:map(parse)
local b = job:generator {}:map(parse)
local ev = a:union(b):event_time("t"):with_watermark("3s", { idle_timeout = "4s" })
local function save(name) return function(r) out[name] = r end end
local ones = ev:map(function(e) return e.k, 1 end)
local vals = ev:map(function(e) return e.k, e.v end)

local tum = ones:event_window { size = "4s", allowed_lateness = "1s", name = "tum" }:count()
tum:foreach_batch(save("tum"))
tum:late():foreach_batch(save("late"))
vals:event_window { size = "6s", slide = "2s" }:reduce(function(x, y) return x + y end)
    :foreach_batch(save("slide"))
vals:event_window { gap = "2s", allowed_lateness = "2s" }:aggregate {
    zero = function() return { n = 0, s = 0 } end,
    add = function(acc, v) acc.n = acc.n + 1; acc.s = acc.s + v; return acc end,
    merge = function(x, y) return { n = x.n + y.n, s = x.s + y.s } end,
    result = function(acc) return acc.n .. "/" .. acc.s end,
}:foreach_batch(save("session"))
ones:event_window { size = "4s", allowed_lateness = "1s", emit = "update" }:count()
    :foreach_batch(save("update"))
return job
]]

local DELAY, IDLE, STEP = 3000, 4000, 1000


-- The model.
local function model()
    local M = {}
    local chans = {}                    -- ch -> { max =, idle = }
    local wm, prev = nil, nil
    local started, since_load = false, 0  -- idle time runs from the first record after a load
    local tum, upd = {}, {}             -- "k|start" -> count (open windows)
    local slide = {}                    -- "k|start" -> sum
    local open = {}                     -- k -> { { t, v } } accepted, session not closed

    local function sessions(recs)
        table.sort(recs, function(x, y) return x[1] < y[1] end)
        local out, cur = {}, nil
        for _, r in ipairs(recs) do
            if cur and r[1] < cur.last + 2000 then
                cur.last = math.max(cur.last, r[1])
                cur.n, cur.s = cur.n + 1, cur.s + r[2]
                cur.recs[#cur.recs + 1] = r
            else
                cur = { first = r[1], last = r[1], n = 1, s = r[2], recs = { r } }
                out[#out + 1] = cur
            end
        end
        return out
    end

    function M.batch(now, records)     -- records: { ch, "k@t:v" }
        local wm_prev = wm or -math.huge
        local want = { tum = {}, late = {}, slide = {}, session = {}, update = {} }
        local seen, touched = {}, {}
        for _, r in ipairs(records) do
            local ch, s = r[1], r[2]
            local k, t, v = s:match("^(%w+)@(%d+):(%d+)$")
            t, v = tonumber(t), tonumber(v)
            local c = chans[ch] or { max = -math.huge, idle = 0 }
            chans[ch] = c
            c.max = math.max(c.max, t - DELAY)
            seen[ch] = true
            -- tumbling (and update): one window
            local st = t - t % 4000
            if st + 4000 + 1000 <= wm_prev then
                want.late[#want.late + 1] = { k, 1 }
            else
                local key = k .. "|" .. st
                tum[key] = (tum[key] or 0) + 1
                upd[key] = (upd[key] or 0) + 1
                touched[key] = true
            end
            -- sliding: every window still open
            local start = t - t % 2000
            while start > t - 6000 do
                if start + 6000 > wm_prev then
                    local key = k .. "|" .. start
                    slide[key] = (slide[key] or 0) + v
                end
                start = start - 2000
            end
            -- session: late unless its own session is open or it joins one
            local o = open[k] or {}
            open[k] = o
            local joins = false
            for _, sess in ipairs(sessions(o)) do
                if sess.first < t + 2000 and sess.last + 2000 > t then joins = true end
            end
            if joins or t + 2000 + 2000 > wm_prev then
                o[#o + 1] = { t, v }
            end
        end
        -- the watermark
        local step = 0
        if prev and now > prev then step = math.min(now - prev, STEP) end
        if not started then
            since_load = since_load + step
            if #records > 0 or since_load >= IDLE then started = true else step = 0 end
        end
        local lo, active, any = math.huge, false, false
        for ch, c in pairs(chans) do
            any = true
            if seen[ch] then c.idle = 0 else c.idle = math.min(c.idle + step, IDLE) end
            if c.idle < IDLE then
                active = true
                lo = math.min(lo, c.max)
            end
        end
        local cand
        if active then cand = lo elseif any and wm then cand = wm + step end
        if cand and (wm == nil or cand > wm) then wm = cand end
        prev = now
        local w = wm or -math.huge
        -- update: windows changed this batch
        for key in pairs(touched) do
            local k, st = key:match("^(.-)|(.*)$")
            st = tonumber(st)
            want.update[#want.update + 1] = { k, st, st + 4000, upd[key] }
        end
        -- closed windows
        for key, n in pairs(tum) do
            local k, st = key:match("^(.-)|(.*)$")
            st = tonumber(st)
            if st + 4000 + 1000 <= w then
                want.tum[#want.tum + 1] = { k, st, st + 4000, n }
                tum[key] = nil
            end
        end
        for key in pairs(upd) do
            local st = tonumber(key:match("|(.*)$"))
            if st + 4000 + 1000 <= w then upd[key] = nil end
        end
        for key, s in pairs(slide) do
            local k, st = key:match("^(.-)|(.*)$")
            st = tonumber(st)
            if st + 6000 <= w then
                want.slide[#want.slide + 1] = { k, st, st + 6000, s }
                slide[key] = nil
            end
        end
        for k, o in pairs(open) do
            local keep = {}
            for _, sess in ipairs(sessions(o)) do
                if sess.last + 2000 + 2000 <= w then
                    want.session[#want.session + 1] = { k, sess.first, sess.last + 2000,
                                                        sess.n .. "/" .. sess.s }
                else
                    for _, r in ipairs(sess.recs) do keep[#keep + 1] = r end
                end
            end
            open[k] = keep
        end
        return want
    end
    function M.loaded()
        started, since_load, prev = false, 0, nil
    end
    return M
end


local function canon(list, raw)
    local t = {}
    for i, e in ipairs(list or {}) do
        if raw then
            t[i] = table.concat({ tostring(e[1]), tostring(e[2]), tostring(e[3]), tostring(e[4]) }, " ")
        elseif type(e[2]) == "table" then
            t[i] = table.concat({ tostring(e[1]), e[2].start, e[2].stop, tostring(e[2].value) }, " ")
        else
            t[i] = tostring(e[1]) .. " " .. tostring(e[2])
        end
    end
    table.sort(t)
    return t
end


-- One batch of records: per channel, quiet stretches (idle), bursts,
-- event times around the batch time, and now and then one far behind.
local function gen_batch(rnd, now, quiet)
    local recs = {}
    local CH = { { 1, 0 }, { 1, 1 }, { 2, -1 } }
    for ci, c in ipairs(CH) do
        if quiet[ci] > 0 then
            quiet[ci] = quiet[ci] - 1
        elseif rnd() < 0.08 then
            quiet[ci] = rnd(3, 9)
        elseif rnd() < 0.85 then
            for _ = 1, rnd(0, 6) do
                local t = now + rnd(-3500, 500)
                if rnd() < 0.06 then t = now - rnd(6000, 14000) end
                if t < 0 then t = 0 end
                recs[#recs + 1] = { c, "k" .. rnd(1, 4) .. "@" .. t .. ":" .. rnd(1, 9) }
            end
        end
    end
    return recs
end


local function blocks_of(recs)
    local b1, b2 = { source = 1 }, { source = 2 }
    for _, r in ipairs(recs) do
        local c, s = r[1], r[2]
        if c[1] == 1 then
            b1[#b1 + 1] = { value = s, partition = c[2] }
        else
            b2[#b2 + 1] = s
        end
    end
    return b1, b2
end


local function chan_of(c)
    return c[1] .. ":" .. c[2]
end


local OUTS = { "tum", "late", "slide", "session", "update" }


local function play(seed, nbatches)
    local dir = H.tmpdir()
    local out = {}
    local sink = H.sink()
    sink.out = out
    local host = H.host(dir)
    host.snapshot_interval = 4
    local path = dir .. "/ev.lua"
    H.write(path, JOB)
    local function load()
        local desc, err = require("ember.runtime").load(path, host)
        assert(desc, err)
        return desc
    end

    math.randomseed(seed)
    local rnd = math.random
    local oracle = model()
    local desc = load()
    assert(desc.restore(0))
    local committed, now = 0, 10000
    local quiet = { 0, 0, 0 }
    local ev = { aborts = 0, crashes = 0, restores = 0, windows = 0, late = 0, sessions = 0 }

    local function run(id, b1, b2)
        local ok, failed, err, fatal = H.run_id(desc, id, now, b1, b2)
        assert(ok and failed == 0 and not fatal,
               "seed " .. seed .. " batch " .. id .. ": " .. tostring(err))
    end

    for _ = 1, nbatches do
        now = now + (rnd() < 0.05 and 1000 * rnd(2, 5) or 1000)
        local recs = gen_batch(rnd, now, quiet)
        local b1, b2 = blocks_of(recs)
        local id = committed + 1
        local fate = rnd()
        if fate < 0.1 then
            run(id, b1, b2)
            if rnd() < 0.5 then assert(desc.prepare(id)) end
            desc.abort()
            ev.aborts = ev.aborts + 1
        elseif fate < 0.17 then
            run(id, b1, b2)
            assert(desc.prepare(id))
            desc = load()
            oracle.loaded()
            assert(desc.restore(committed))
            ev.crashes = ev.crashes + 1
        elseif fate < 0.24 then
            desc = load()
            oracle.loaded()
            assert(desc.restore(committed))
            ev.restores = ev.restores + 1
        end
        for _, o in ipairs(OUTS) do out[o] = nil end
        run(id, b1, b2)
        assert(desc.prepare(id))
        assert(desc.apply(id))
        committed = id
        local mrecs = {}
        for _, r in ipairs(recs) do mrecs[#mrecs + 1] = { chan_of(r[1]), r[2] } end
        local want = oracle.batch(now, mrecs)
        for _, o in ipairs(OUTS) do
            assert.same(canon(want[o], o ~= "late"), canon(out[o]),
                        "seed " .. seed .. ", batch " .. id .. " at " .. now .. ", " .. o)
        end
        ev.windows = ev.windows + #want.tum + #want.slide + #want.session
        ev.sessions = ev.sessions + #want.session
        ev.late = ev.late + #want.late
    end
    H.rm_rf(dir)
    return ev
end


describe("event-time windows against a model", function()
    for _, seed in ipairs { 21, 22, 23 } do
        it("agree window by window, with late records and idle sources (seed " .. seed .. ")",
           function()
            local ev = play(seed, 120)
            assert.is_true(ev.aborts > 0 and ev.crashes > 0 and ev.restores > 0,
                           "aborts " .. ev.aborts .. ", crashes " .. ev.crashes .. ", restores "
                           .. ev.restores)
            -- the streams made every path happen
            assert.is_true(ev.windows > 100 and ev.sessions > 10 and ev.late > 3,
                           "windows " .. ev.windows .. ", sessions " .. ev.sessions
                           .. ", late " .. ev.late)
        end)
    end
end)
