-- An oracle for keyed state: random keyed streams (bursts, empty batches,
-- keys appearing and vanishing, idle gaps that time keys out) go through
-- update_state_by_key, map_with_state and state_snapshots, and every
-- committed batch's outputs are compared with a plain-Lua model of Spark's
-- semantics. On the way the driver's life is played at random: a run
-- aborted (before or after prepare) and run again, a process that died
-- after prepare, a fresh load restored from the files midway.

local H = require "spec.unit.support.helper"


local JOB = [[
local ember = require "ember"
local out = require("test_sink").out
local job = ember.job { name = "oracle" }
local pairs_ = job:generator {}
  :map(function(s)
      local k, v = s:match("^(%w+):(%w+)$")
      return k, tonumber(v) or v
  end)

pairs_:filter(function(k, v) return v ~= "del" end)
  :update_state_by_key(function(values, st)
      st = st or { sum = 0, idle = 0 }
      if #values == 0 then
          if st.idle >= 2 then return nil end
          st.idle = st.idle + 1
      else
          st.idle = 0
          for _, v in ipairs(values) do st.sum = st.sum + v end
      end
      return st
  end, { name = "totals" })
  :foreach_batch(function(r) out.u = r end)

local m = pairs_:map_with_state { name = "sessions", timeout = "5s", fn = function(k, v, state)
    if state:is_timing_out() then
        return "timeout", k .. "=" .. state:get()
    end
    if v == "del" then
        state:remove()
        return "del", k
    end
    local n = (state:get() or 0) + v
    state:set(n)
    return k, n
end }
m:foreach_batch(function(r) out.m = r end)
m:state_snapshots():foreach_batch(function(r) out.s = r end)
return job
]]


-- The model: what Spark's semantics give, batch by batch.
local function model()
    local ustate, mstate, last = {}, {}, {}
    local M = {}
    function M.batch(time, records)
        local parsed = {}
        for i, s in ipairs(records) do
            local k, v = s:match("^(%w+):(%w+)$")
            parsed[i] = { k, tonumber(v) or v }
        end
        -- update_state_by_key
        local values, seen = {}, {}
        for _, p in ipairs(parsed) do
            if p[2] ~= "del" then
                values[p[1]] = values[p[1]] or {}
                table.insert(values[p[1]], p[2])
            end
        end
        for k in pairs(ustate) do seen[k] = true end
        for k in pairs(values) do seen[k] = true end
        local u = {}
        for k in pairs(seen) do
            local st = ustate[k] and { sum = ustate[k].sum, idle = ustate[k].idle }
                       or { sum = 0, idle = 0 }
            local vs = values[k] or {}
            local new = st
            if #vs == 0 then
                if st.idle >= 2 then new = nil else st.idle = st.idle + 1 end
            else
                st.idle = 0
                for _, v in ipairs(vs) do st.sum = st.sum + v end
            end
            ustate[k] = new
            if new then u[#u + 1] = { k, { sum = new.sum, idle = new.idle } } end
        end
        -- map_with_state
        local m, touched = {}, {}
        for _, p in ipairs(parsed) do
            local k, v = p[1], p[2]
            touched[k] = true
            last[k] = time
            if v == "del" then
                mstate[k] = nil
                m[#m + 1] = { "del", k }
            else
                mstate[k] = (mstate[k] or 0) + v
                m[#m + 1] = { k, mstate[k] }
            end
        end
        for k, n in pairs(mstate) do
            if not touched[k] and last[k] <= time - 5000 then
                m[#m + 1] = { "timeout", k .. "=" .. n }
                mstate[k] = nil
            end
        end
        local s = {}
        for k, n in pairs(mstate) do s[#s + 1] = { k, n } end
        return { u = u, m = m, s = s }
    end
    return M
end


local function canon(list)
    local t = {}
    for i, e in ipairs(list or {}) do
        local v = e[2]
        if type(v) == "table" then
            v = "{" .. v.sum .. "," .. v.idle .. "}"
        end
        t[i] = tostring(e[1]) .. "\t" .. tostring(v)
    end
    table.sort(t)
    return t
end


-- The records of one batch: empty, a burst on few keys, or a handful
-- from a window of keys that drifts (keys appear and vanish).
local function gen_batch(rnd, base)
    local r = rnd()
    local recs = {}
    if r < 0.15 then
        return recs
    elseif r < 0.3 then
        local k1 = rnd(base, base + 3)
        for i = 1, rnd(50, 300) do
            recs[i] = "k" .. (k1 + i % 2) .. ":" .. rnd(1, 9)
        end
    else
        for i = 1, rnd(1, 30) do
            local k = rnd(base, base + 12)
            recs[i] = "k" .. k .. ":" .. (rnd() < 0.07 and "del" or rnd(1, 9))
        end
    end
    return recs
end


local function play(seed, nbatches)
    local dir = H.tmpdir()
    local out = {}
    local sink = H.sink()
    sink.out = out
    local host = H.host(dir)
    host.snapshot_interval = 3
    host.snapshot_min_slice = 2         -- snapshots spread over several commits
    local path = dir .. "/oracle.lua"
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
    local events = { aborts = 0, crashes = 0, restores = 0, snapshots = 0, later = 0,
                     late_crashes = 0 }

    local function run(id, recs)
        local ok, failed, err, fatal = H.run_id(desc, id, time, recs)
        assert(ok and failed == 0 and not fatal,
               "seed " .. seed .. " batch " .. id .. ": " .. tostring(err))
    end

    for _ = 1, nbatches do
        time = time + (rnd() < 0.1 and 7000 or 1000)
        if rnd() < 0.2 then base = base + rnd(1, 4) end
        local recs = gen_batch(rnd, base)
        local id = committed + 1
        local fate = rnd()
        if fate < 0.15 then
            -- a failed attempt: run (maybe prepared), then aborted
            run(id, recs)
            if rnd() < 0.5 then assert(desc.prepare(id)) end
            desc.abort()
            events.aborts = events.aborts + 1
        elseif fate < 0.25 then
            -- the process dies after prepare, before its checkpoint
            run(id, recs)
            assert(desc.prepare(id))
            desc = load()
            assert(desc.restore(committed))
            events.crashes = events.crashes + 1
        elseif fate < 0.35 then
            -- a fresh load restored from the files between batches
            desc = load()
            assert(desc.restore(committed))
            events.restores = events.restores + 1
        end
        out.u, out.m, out.s = nil, nil, nil
        run(id, recs)
        local ok, err = desc.prepare(id)
        assert(ok, err)
        local how = rnd()
        if how < 0.5 then
            -- the driver's way: the merge and the snapshot slice come after the
            -- acks (maintain), or are left to the next batch
            assert(desc.apply(id, true))
            if how < 0.35 then
                local mok, merr = desc.maintain()
                assert(mok, merr)
            elseif how < 0.42 then
                -- the process dies after the commit, before maintain
                desc = load()
                assert(desc.restore(id))
                events.late_crashes = events.late_crashes + 1
            end
            events.later = events.later + 1
        else
            assert(desc.apply(id))
        end
        committed = id
        local want = oracle.batch(time, recs)
        for _, o in ipairs { "u", "m", "s" } do
            assert.same(canon(want[o]), canon(out[o]),
                        "seed " .. seed .. ", batch " .. id .. ", output " .. o)
        end
    end
    local p0 = dir .. "/checkpoint/oracle/state/v0/sessions/p0"
    for _, name in ipairs(require("ember.state_files").list(p0)) do
        if name:match("^snapshot") then events.snapshots = events.snapshots + 1 end
    end
    H.rm_rf(dir)
    return events
end


describe("keyed state against a model", function()
    for _, seed in ipairs { 1, 2, 3, 4, 5, 6 } do
        it("agrees batch by batch over 80 random batches (seed " .. seed .. ")", function()
            local ev = play(seed, 80)
            -- the run went through every path it means to test
            assert.is_true(ev.aborts > 0 and ev.crashes > 0 and ev.restores > 0
                           and ev.later > 0 and ev.late_crashes > 0,
                           "aborts " .. ev.aborts .. ", crashes " .. ev.crashes
                           .. ", restores " .. ev.restores .. ", later " .. ev.later
                           .. ", late crashes " .. ev.late_crashes)
        end)
    end
end)
