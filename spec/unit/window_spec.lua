-- Processing-time windows: what a load checks, where the window's contents
-- live (the job's state files), a reload that changes the job's code, and
-- state_max over window contents. The windows' results themselves are
-- checked against a model in window_oracle_spec.lua.

local H = require "spec.unit.support.helper"
local files = require "ember.state_files"


local dir, sink

local HEAD = [[
local ember = require "ember"
local sink = require "test_sink"
]]

local function load(body, opts, host)
    return H.load(dir, HEAD .. "local job = ember.job " .. (opts or "{ name = 'w', batch_interval = '1s' }")
                  .. "\nlocal src = job:generator {}\n" .. body .. "\nreturn job\n", "job", host)
end

local function job(body, opts, host)
    local desc, err, h = load(body, opts, host)
    assert(desc, err)
    return desc, h
end

local function sorted_pairs(records)
    local t = {}
    for _, r in ipairs(records or {}) do
        t[#t + 1] = tostring(r[1]) .. "=" .. tostring(r[2])
    end
    table.sort(t)
    return t
end

local COUNTS = [[
src:map(function(s) return s, 1 end)
   :reduce_by_key_and_window(function(a, b) return a + b end, function(a, b) return a - b end,
                             "3s", "1s", { name = "counts" })
   :foreach_batch(sink.collect)
]]

before_each(function()
    dir = H.tmpdir()
    sink = H.sink()
end)

after_each(function()
    H.rm_rf(dir)
end)


describe("window declarations", function()
    it("refuse a length that is not a multiple of the batch interval, with file:line", function()
        local desc, err = load("src:window('2500ms', '1s'):print()", "{ batch_interval = '1s' }")
        assert.is_nil(desc)
        assert.matches("job%.lua:5: window: window length 2500ms is not a multiple of the "
                       .. "batch interval %(1s%)", err)
    end)

    it("refuse a slide that is not a multiple of the batch interval", function()
        local desc, err = load("src:map(function(s) return s, 1 end)\n"
                               .. ":reduce_by_key_and_window(function(a, b) return a + b end, "
                               .. "'6s', '3s'):print()", "{ batch_interval = '2s' }")
        assert.is_nil(desc)
        assert.matches("job%.lua:6: reduce_by_key_and_window: window slide 3s is not a "
                       .. "multiple of the batch interval %(2s%)", err)
    end)

    it("take the batch interval of the configuration when the job sets none", function()
        local h = H.host(dir)
        h.batch_interval_ms = 2000
        local desc, err = load("src:count_by_window('3s'):print()", "{ name = 'w' }", h)
        assert.is_nil(desc)
        assert.matches("window length 3s is not a multiple of the batch interval %(2s%)", err)
        h = H.host(dir)
        h.batch_interval_ms = 1500
        assert(load("src:count_by_window('3s'):print()", "{ name = 'w' }", h))
    end)

    it("refuse a bad length, a missing function and pairs where single values go", function()
        local _, err = load("src:window('soon'):print()")
        assert.matches("bad argument #1 to 'window' %(window length", err)
        _, err = load("src:reduce_by_window('5s', '1s'):print()")
        assert.matches("bad argument #1 to 'reduce_by_window' %(function expected", err)
        _, err = load("src:reduce_by_key_and_window(function(a, b) return a end, '5s'):print()")
        assert.matches("'reduce_by_key_and_window' needs a stream of %(key, value%) pairs", err)
        _, err = load("src:map(function(s) return s, 1 end):map_values(tostring)\n"
                      .. ":count_by_value_and_window('5s'):print()")
        assert.matches("'count_by_value_and_window' needs a stream of single values", err)
        _, err = load("src:window('5s', '1s', { nam = 'x' }):print()")
        assert.matches("bad option 'nam' to 'window'", err)
    end)
end)


describe("window state", function()
    it("lives in the state files, only as long as the window needs it", function()
        local desc = job(COUNTS)
        assert.is_true(desc.stateful)
        assert(desc.restore(0))
        H.commit(desc, 1, 1000, { "a", "b" })
        H.commit(desc, 2, 2000, { "a" })
        assert.same({ "a=2", "b=1" }, sorted_pairs(sink.last()))
        local root = dir .. "/checkpoint/w/state/v0"
        assert.same({ "counts", "counts#agg", "counts#cnt" }, (function()
            local n = files.list(root)
            table.sort(n)
            return n
        end)())
        H.commit(desc, 3, 3000, {})
        H.commit(desc, 4, 4000, {})
        -- the batch of 1000 left the window at 4000: a is counted once
        assert.same({ "a=1" }, sorted_pairs(sink.last()))
        H.commit(desc, 5, 5000, {})
        assert.same({}, sorted_pairs(sink.last()))
        -- every slot and every key left: nothing stays in memory
        assert.equal(0, desc.state_bytes()["counts"])
        assert.equal(0, desc.state_bytes()["counts#agg"])
        assert.equal(0, desc.state_bytes()["counts#cnt"])
    end)

    it("keeps the open windows across a load of changed code, as after a reload", function()
        local desc = job(COUNTS)
        assert(desc.restore(0))
        H.commit(desc, 1, 1000, { "a", "b", "a" })
        H.commit(desc, 2, 2000, { "b" })
        -- the new version formats its output differently; the window is the same
        local desc2 = job([[
src:map(function(s) return s, 1 end)
   :reduce_by_key_and_window(function(a, b) return a + b end, function(a, b) return a - b end,
                             "3s", "1s", { name = "counts" })
   :map(function(k, n) return k .. " seen " .. n end)
   :foreach_batch(sink.collect)
]])
        assert(desc2.restore(2))
        H.commit(desc2, 3, 3000, { "c" })
        local got = sink.last()
        table.sort(got)
        assert.same({ "a seen 2", "b seen 2", "c seen 1" }, got)
        H.commit(desc2, 4, 4000, {})
        got = sink.last()
        table.sort(got)
        assert.same({ "b seen 1", "c seen 1" }, got)
    end)

    it("counts window contents in state_max, naming the window", function()
        local desc = job("src:window('10s', '1s', { name = 'recent' }):foreach_batch(sink.collect)",
                         "{ name = 'w', batch_interval = '1s', state_max = 2000 }")
        assert(desc.restore(0))
        H.commit(desc, 1, 1000, { string.rep("x", 500) })
        H.commit(desc, 2, 2000, { string.rep("y", 500) })
        local v = require("spec.unit.support.view").batch(3000, { string.rep("z", 1200) })
        local ok, _, err, fatal = desc.run_batch(v.ptr, 3)
        assert.is_false(ok)
        assert.is_true(fatal)
        assert.matches("over state.max %(2.0 KiB%); window 'recent' %(.-job%.lua:%d+%) holds", err)
    end)
end)
