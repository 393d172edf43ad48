-- Joins of two keyed streams within a batch (Spark's DStream joins).

local H = require "spec.unit.support.helper"


local dir, sink

local JOB = [[
local ember = require "ember"
local sink = require "test_sink"
local job = ember.job { name = "j" }
local function kv(s) local k, v = s:match("^(%w+)=(%w+)$") return k, v end
local a = job:generator {}:map(kv)
local b = job:generator {}:map(kv)
a:]] .. "%s" .. [[(b):foreach_batch(function(r) sink.out = r end)
return job
]]

local function run(kind, left, right)
    local desc, err = H.load(dir, (JOB:gsub("%%s", kind)), "job")
    assert(desc, err)
    local view = require "spec.unit.support.view"
    local l = { source = 1 }
    for i, s in ipairs(left) do l[i] = s end
    local r = { source = 2 }
    for i, s in ipairs(right) do r[i] = s end
    local v = view.batch(1000, l, r)
    local ok, failed, e = desc.run_batch(v.ptr)
    assert(ok and failed == 0, e)
    local t = {}
    for _, p in ipairs(sink.out) do
        local x, y = p[2][1], p[2][2]
        if type(x) == "table" then
            x, y = table.concat(x, ","), table.concat(y, ",")
        end
        t[#t + 1] = p[1] .. ":" .. tostring(x) .. "|" .. tostring(y)
    end
    table.sort(t)
    return t
end

before_each(function()
    dir = H.tmpdir()
    sink = H.sink()
end)

after_each(function()
    H.rm_rf(dir)
end)

describe("joins within a batch", function()
    local L = { "a=1", "a=2", "b=3", "c=4" }
    local R = { "a=x", "b=y", "b=z", "d=w" }

    it("join pairs every value of a key on both sides", function()
        assert.same({ "a:1|x", "a:2|x", "b:3|y", "b:3|z" }, run("join", L, R))
    end)

    it("left_outer_join keeps the left keys the right side lacks", function()
        assert.same({ "a:1|x", "a:2|x", "b:3|y", "b:3|z", "c:4|nil" }, run("left_outer_join", L, R))
    end)

    it("full_outer_join keeps the keys of either side", function()
        assert.same({ "a:1|x", "a:2|x", "b:3|y", "b:3|z", "c:4|nil", "d:nil|w" },
                    run("full_outer_join", L, R))
    end)

    it("cogroup gives both sides' values per key", function()
        assert.same({ "a:1,2|x", "b:3|y,z", "c:4|", "d:|w" }, run("cogroup", L, R))
    end)

    it("joins a stream with itself", function()
        local desc = assert(H.load(dir, [[
local ember = require "ember"
local sink = require "test_sink"
local job = ember.job { name = "j" }
local a = job:generator {}:map(function(s) return s:match("^(%w+)=(%w+)$") end)
a:join(a):foreach_batch(function(r) sink.out = r end)
return job
]], "self"))
        assert(H.run(desc, 1000, { "a=1", "a=2", "b=3" }))
        local t = {}
        for _, p in ipairs(sink.out) do t[#t + 1] = p[1] .. p[2][1] .. p[2][2] end
        table.sort(t)
        assert.same({ "a11", "a12", "a21", "a22", "b33" }, t)
    end)

    it("joins two windows of the same slide (Spark's windowed join)", function()
        local desc = assert(H.load(dir, [[
local ember = require "ember"
local sink = require "test_sink"
local job = ember.job { name = "j", batch_interval = "1s" }
local function kv(s) return s:match("^(%w+)=(%w+)$") end
local a = job:generator {}:map(kv):window("3s", "1s")
local b = job:generator {}:map(kv):window("2s", "1s")
a:join(b):foreach_batch(function(r) sink.out = r end)
return job
]], "wj"))
        assert(desc.restore(0))
        local view = require "spec.unit.support.view"
        local function batch(id, t, l, r)
            local v = view.batch(t, l, r)
            local ok, failed, e = desc.run_batch(v.ptr, id)
            assert(ok and failed == 0, e)
            assert(desc.prepare(id))
            assert(desc.apply(id))
            local out = {}
            for _, p in ipairs(sink.out) do out[#out + 1] = p[1] .. p[2][1] .. p[2][2] end
            table.sort(out)
            return out
        end
        assert.same({}, batch(1, 1000, { source = 1, "a=1" }, { source = 2, "b=x" }))
        assert.same({ "a1y" }, batch(2, 2000, { source = 1 }, { source = 2, "a=y" }))
        -- a=1 is still in a's 3 s window; b's 2 s window still has a=y
        assert.same({ "a1y", "a2y" }, batch(3, 3000, { source = 1, "a=2" }, { source = 2 }))
        -- a=y left b's window
        assert.same({}, batch(4, 4000, { source = 1 }, { source = 2 }))
    end)

    it("refuses a stream of single values", function()
        local _, err = H.load(dir, [[
local ember = require "ember"
local job = ember.job { name = "j" }
local a = job:generator {}:map(function(s) return s, 1 end)
a:join(job:generator {}):print()
return job
]], "bad")
        assert.matches("bad%.lua:4: bad argument #1 to 'join' %(a stream of %(key, value%) pairs expected", err)
    end)
end)
