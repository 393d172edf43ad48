-- An oracle for processing-time windows: random streams (bursts, empty
-- batches, keys appearing and vanishing, gaps in batch times as after a
-- stall or a restart) go through every window operator, the plain and the
-- inverse forms, and every emitted window is compared with a plain-Lua
-- model that keeps every batch and recomputes the window from scratch. On
-- the way the driver's life is played at random, as in
-- state_oracle_spec.lua: aborted runs, a process that died after prepare,
-- a fresh load restored from the files midway.

local H = require "spec.unit.support.helper"


local JOB = [[
local ember = require "ember"
local out = require("test_sink").out
local job = ember.job { name = "win", batch_interval = "1s" }
local src = job:generator {}
local pairs_ = src:map(function(s)
    local k, v = s:match("^(%w+):(%d+)$")
    return k, tonumber(v)
end)
local keys = src:map(function(s) return (s:match("^(%w+):")) end)
local nums = pairs_:map(function(k, v) return v end)
local function add(a, b) return a + b end
local function sub(a, b) return a - b end
local function save(name) return function(r) out[name] = r end end

src:window("5s", "2s"):foreach_batch(save("window"))
src:count_by_window("5s", "2s"):foreach_batch(save("count"))
nums:reduce_by_window(add, "5s", "2s"):foreach_batch(save("rw"))
nums:reduce_by_window(add, sub, "5s", "2s"):foreach_batch(save("rw_inv"))
pairs_:reduce_by_key_and_window(add, "5s", "2s"):foreach_batch(save("rk"))
pairs_:reduce_by_key_and_window(add, sub, "5s", "2s"):foreach_batch(save("rk_inv"))
pairs_:reduce_by_key_and_window(add, sub, "6s", "3s", function(k, v) return v > 12 end)
      :foreach_batch(save("rk_filter"))
pairs_:reduce_by_key_and_window(add, "6s", "3s", function(k, v) return v > 12 end)
      :foreach_batch(save("rk_filter_plain"))
keys:count_by_value_and_window("4s"):foreach_batch(save("cv"))
return job
]]


-- The model: every batch kept; a window recomputed from its batches.
local function model()
    local batches = {}                  -- { time, records }
    local M = {}
    local function within(t, len)
        local r = {}
        for _, b in ipairs(batches) do
            if b.time > t - len and b.time <= t then
                for _, s in ipairs(b.records) do r[#r + 1] = s end
            end
        end
        return r
    end
    local function by_key(recs, filter)
        local m = {}
        for _, s in ipairs(recs) do
            local k, v = s:match("^(%w+):(%d+)$")
            m[k] = (m[k] or 0) + tonumber(v)
        end
        local out = {}
        for k, v in pairs(m) do
            if not filter or filter(k, v) then out[#out + 1] = { k, v } end
        end
        return out
    end
    function M.batch(t, records)
        batches[#batches + 1] = { time = t, records = records }
        local want = {}
        if t % 2000 == 0 then
            local w = within(t, 5000)
            want.window = w
            want.count = { #w }
            local sum = 0
            for _, s in ipairs(w) do sum = sum + tonumber(s:match(":(%d+)$")) end
            want.rw = #w > 0 and { sum } or {}
            want.rw_inv = want.rw
            want.rk = by_key(w)
            want.rk_inv = want.rk
        end
        if t % 3000 == 0 then
            local f = function(k, v) return v > 12 end
            want.rk_filter = by_key(within(t, 6000), f)
            want.rk_filter_plain = want.rk_filter
        end
        local cv = {}
        for _, s in ipairs(within(t, 4000)) do
            local k = s:match("^(%w+):")
            cv[k] = (cv[k] or 0) + 1
        end
        want.cv = {}
        for k, c in pairs(cv) do want.cv[#want.cv + 1] = { k, c } end
        return want
    end
    return M
end


local function canon(list)
    local t = {}
    for i, e in ipairs(list or {}) do
        if type(e) == "table" then
            t[i] = tostring(e[1]) .. "\t" .. tostring(e[2])
        else
            t[i] = tostring(e)
        end
    end
    table.sort(t)
    return t
end


local function gen_batch(rnd, base)
    local r = rnd()
    local recs = {}
    if r < 0.2 then
        return recs
    elseif r < 0.3 then
        local k1 = rnd(base, base + 3)
        for i = 1, rnd(50, 200) do
            recs[i] = "k" .. (k1 + i % 2) .. ":" .. rnd(1, 9)
        end
    else
        for i = 1, rnd(1, 25) do
            recs[i] = "k" .. rnd(base, base + 10) .. ":" .. rnd(1, 9)
        end
    end
    return recs
end


local OUTS = { "window", "count", "rw", "rw_inv", "rk", "rk_inv", "rk_filter",
               "rk_filter_plain", "cv" }


local function play(seed, nbatches)
    local dir = H.tmpdir()
    local out = {}
    local sink = H.sink()
    sink.out = out
    local host = H.host(dir)
    host.snapshot_interval = 4
    local path = dir .. "/win.lua"
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
    local committed, time, base = 0, 0, 1
    local ev = { aborts = 0, crashes = 0, restores = 0, emitted = 0, gaps = 0 }

    local function run(id, recs)
        local ok, failed, err, fatal = H.run_id(desc, id, time, recs)
        assert(ok and failed == 0 and not fatal,
               "seed " .. seed .. " batch " .. id .. ": " .. tostring(err))
    end

    for _ = 1, nbatches do
        if rnd() < 0.08 then
            time = time + 1000 * rnd(2, 7)      -- a stall or a restart: batches skipped
            ev.gaps = ev.gaps + 1
        else
            time = time + 1000
        end
        if rnd() < 0.2 then base = base + rnd(1, 3) end
        local recs = gen_batch(rnd, base)
        local id = committed + 1
        local fate = rnd()
        if fate < 0.12 then
            run(id, recs)
            if rnd() < 0.5 then assert(desc.prepare(id)) end
            desc.abort()
            ev.aborts = ev.aborts + 1
        elseif fate < 0.2 then
            run(id, recs)
            assert(desc.prepare(id))
            desc = load()
            assert(desc.restore(committed))
            ev.crashes = ev.crashes + 1
        elseif fate < 0.28 then
            desc = load()
            assert(desc.restore(committed))
            ev.restores = ev.restores + 1
        end
        for _, o in ipairs(OUTS) do out[o] = nil end
        run(id, recs)
        assert(desc.prepare(id))
        assert(desc.apply(id))
        committed = id
        local want = oracle.batch(time, recs)
        for _, o in ipairs(OUTS) do
            if want[o] then
                ev.emitted = ev.emitted + 1
                assert.same(canon(want[o]), canon(out[o]),
                            "seed " .. seed .. ", batch " .. id .. " at " .. time .. ", " .. o)
            else
                assert.same({}, out[o] or {}, "seed " .. seed .. ", batch " .. id
                            .. ": " .. o .. " emitted between slides")
            end
        end
    end
    H.rm_rf(dir)
    return ev
end


describe("processing-time windows against a model", function()
    for _, seed in ipairs { 11, 12, 13, 14 } do
        it("agree window by window over 90 random batches (seed " .. seed .. ")", function()
            local ev = play(seed, 90)
            assert.is_true(ev.aborts > 0 and ev.crashes > 0 and ev.restores > 0 and ev.gaps > 0,
                           "aborts " .. ev.aborts .. ", crashes " .. ev.crashes .. ", restores "
                           .. ev.restores .. ", gaps " .. ev.gaps)
            assert.is_true(ev.emitted > 200)
        end)
    end
end)
