-- What each DStream transformation produces from one batch.

local H = require "spec.unit.support.helper"


local dir, sink

local function job(body)
    local desc, err = H.load(dir, [[
local ember = require "ember"
local sink = require "test_sink"
local job = ember.job { name = "t" }
local src = job:generator {}
]] .. body .. "\nreturn job\n")
    assert(desc, err)
    return desc
end

local function run(desc, ...)
    local ok, failed, err, fatal = H.run(desc, 1000, { ... })
    assert.is_true(ok)
    assert.equal(0, failed, err)
    assert.is_false(fatal)
    return sink.last()
end

before_each(function()
    dir = H.tmpdir()
    sink = H.sink()
end)

after_each(function()
    H.rm_rf(dir)
end)


describe("a source stream", function()
    it("hands each record's value to the job as a Lua string", function()
        local desc = job [[src:foreach_batch(sink.collect)]]
        assert.same({ "a", "", "x\0y" }, run(desc, "a", "", "x\0y"))
    end)

    it("delivers the blocks of a batch in order", function()
        local desc = job [[src:foreach_batch(sink.collect)]]
        H.run(desc, 1000, { "1", "2" }, { "3" })
        assert.same({ "1", "2", "3" }, sink.last())
    end)
end)


describe("map", function()
    it("replaces each record by the function's result", function()
        local desc = job [[src:map(string.upper):foreach_batch(sink.collect)]]
        assert.same({ "A", "B" }, run(desc, "a", "b"))
    end)

    it("makes a keyed stream of (key, value) pairs when the function returns two values", function()
        local desc = job [[src:map(function(s) return s, #s end):foreach_batch(sink.collect)]]
        assert.same({ { "a", 1 }, { "bb", 2 } }, run(desc, "a", "bb"))
    end)

    it("drops the record when the function returns nil", function()
        local desc = job [[src:map(function(s) if s ~= "x" then return s end end)
                             :foreach_batch(sink.collect)]]
        assert.same({ "a", "b" }, run(desc, "a", "x", "b"))
    end)

    it("calls the function with the record alone, so cjson.decode can be passed directly", function()
        local desc = job [[src:map(require("cjson").decode)
                             :map(function(t) return t.n end)
                             :foreach_batch(sink.collect)]]
        assert.same({ 1, 2 }, run(desc, '{"n":1}', '{"n":2}'))
    end)

    it("receives (key, value) on a keyed stream", function()
        local desc = job [[src:map(function(s) return s, 1 end)
                             :map(function(k, v) return k .. "=" .. v end)
                             :foreach_batch(sink.collect)]]
        assert.same({ "a=1" }, run(desc, "a"))
    end)
end)


describe("filter", function()
    it("keeps the records for which the function returns a true value", function()
        local desc = job [[src:filter(function(s) return s:sub(1, 1) == "k" end)
                             :foreach_batch(sink.collect)]]
        assert.same({ "k1", "k2" }, run(desc, "k1", "x", "k2", "y"))
    end)

    it("receives (key, value) on a keyed stream and keeps the pair", function()
        local desc = job [[src:map(function(s) return s, tonumber(s) end)
                             :filter(function(k, v) return v > 1 end)
                             :foreach_batch(sink.collect)]]
        assert.same({ { "2", 2 }, { "3", 3 } }, run(desc, "1", "2", "3"))
    end)
end)


describe("flat_map", function()
    it("emits every element of the returned array, in order", function()
        local desc = job [[src:flat_map(function(line)
                                local t = {}
                                for w in line:gmatch("%S+") do t[#t + 1] = w end
                                return t
                             end):foreach_batch(sink.collect)]]
        assert.same({ "a", "b", "c", "d" }, run(desc, "a b", "", "c d"))
    end)

    it("emits nothing for a record when the function returns nil", function()
        local desc = job [[src:flat_map(function(s) if s == "2" then return { s, s } end end)
                             :foreach_batch(sink.collect)]]
        assert.same({ "2", "2" }, run(desc, "1", "2", "3"))
    end)

    it("receives (key, value) on a keyed stream", function()
        local desc = job [[src:map(function(s) return s, 2 end)
                             :flat_map(function(k, v) return { k .. v, v } end)
                             :foreach_batch(sink.collect)]]
        assert.same({ "a2", 2 }, run(desc, "a"))
    end)
end)


describe("map_values", function()
    it("keeps each key and maps its value", function()
        local desc = job [[src:map(function(s) return s, #s end)
                             :map_values(function(v) return v * 10 end)
                             :foreach_batch(sink.collect)]]
        assert.same({ { "a", 10 }, { "abc", 30 } }, run(desc, "a", "abc"))
    end)
end)


describe("union", function()
    it("merges two streams of the same job", function()
        local desc = assert(H.load(dir, [[
local ember = require "ember"
local sink = require "test_sink"
local job = ember.job { name = "u" }
local a = job:socket { port = 1 }:map(function(s) return "a:" .. s end)
local b = job:file { path = "/dev/null" }:map(function(s) return "b:" .. s end)
a:union(b):foreach_batch(sink.collect)
return job
]]))
        H.run(desc, 1000, { source = 2, "x" }, { source = 1, "y", "z" })
        assert.same({ "b:x", "a:y", "a:z" }, sink.last())
    end)

    it("of a stream with itself yields each element twice", function()
        local desc = job [[src:union(src):foreach_batch(sink.collect)]]
        assert.same({ "a", "a" }, run(desc, "a"))
    end)
end)


describe("reduce_by_key", function()
    it("combines the values of each key, keys in the order they first appeared", function()
        local desc = job [[src:map(function(s) return s, 1 end)
                             :reduce_by_key(function(a, b) return a + b end)
                             :foreach_batch(sink.collect)]]
        assert.same({ { "b", 2 }, { "a", 3 } }, run(desc, "b", "a", "a", "b", "a"))
    end)

    it("takes a function such as math.max, as in the design's example", function()
        local desc = assert(H.load(dir, [[
local ember = require "ember"
local cjson = require "cjson.safe"
local sink = require "test_sink"
local job = ember.job { name = "air_quality", batch_interval = "2s" }
job:kafka { brokers = "localhost:9092", topic = "datapoints" }
  :map(cjson.decode)
  :filter(function(p) return p and p.device and p.pm25 end)
  :map(function(p) return p.device, p.pm25 end)
  :reduce_by_key(math.max)
  :foreach_batch(sink.collect)
return job
]]))
        H.run(desc, 1000, { '{"device":"d1","pm25":3}', "not json", '{"device":"d2","pm25":9}',
                            '{"device":"d1","pm25":7}', '{"device":"d1"}' })
        assert.same({ { "d1", 7 }, { "d2", 9 } }, sink.last())
    end)

    it("starts afresh with every batch", function()
        local desc = job [[src:map(function(s) return s, 1 end)
                             :reduce_by_key(function(a, b) return a + b end)
                             :foreach_batch(sink.collect)]]
        run(desc, "a", "a")
        assert.same({ { "a", 1 }, { "b", 1 } }, run(desc, "a", "b"))
    end)
end)


describe("group_by_key", function()
    it("gathers the values of each key in arrival order", function()
        local desc = job [[src:map(function(s) return s:sub(1, 1), s end)
                             :group_by_key()
                             :foreach_batch(sink.collect)]]
        assert.same({ { "a", { "a1", "a2" } }, { "b", { "b1" } } }, run(desc, "a1", "b1", "a2"))
    end)
end)


describe("count", function()
    it("emits the number of records of the batch", function()
        local desc = job [[src:count():foreach_batch(sink.collect)]]
        assert.same({ 3 }, run(desc, "a", "b", "c"))
    end)

    it("emits 0 for an empty batch, as Spark does", function()
        local desc = job [[src:count():foreach_batch(sink.collect)]]
        assert.same({ 0 }, run(desc))
    end)
end)


describe("count_by_value", function()
    it("emits (value, how many times it occurred)", function()
        local desc = job [[src:count_by_value():foreach_batch(sink.collect)]]
        assert.same({ { "x", 2 }, { "y", 1 } }, run(desc, "x", "y", "x"))
    end)
end)


describe("reduce", function()
    it("folds the batch into one element", function()
        local desc = job [[src:map(tonumber):reduce(function(a, b) return a + b end)
                             :foreach_batch(sink.collect)]]
        assert.same({ 6 }, run(desc, "1", "2", "3"))
    end)

    it("emits nothing for an empty batch", function()
        local desc = job [[src:reduce(function(a, b) return a .. b end):foreach_batch(sink.collect)]]
        assert.same({}, run(desc))
    end)

    it("receives the elements of a keyed stream as {key, value}", function()
        local desc = job [[src:map(function(s) return s, #s end)
                             :reduce(function(a, b) if b[2] > a[2] then return b end return a end)
                             :foreach_batch(sink.collect)]]
        assert.same({ { "ccc", 3 } }, run(desc, "a", "ccc", "bb"))
    end)
end)


describe("transform", function()
    it("receives the batch as an array with its info and returns the new array", function()
        local desc = job [[src:map(function(s) return s, 1 end)
                             :transform(function(records, info)
                                 local out = {}
                                 for i = #records, 1, -1 do
                                     out[#out + 1] = records[i][1] .. "@" .. info.time
                                 end
                                 out[#out + 1] = info.job .. ":" .. info.count
                                 return out
                             end)
                             :foreach_batch(sink.collect)]]
        assert.same({ "b@1000", "a@1000", "t:2" }, run(desc, "a", "b"))
    end)
end)


describe("a graph", function()
    it("feeds every consumer of a stream", function()
        local desc = job [[local up = src:map(string.upper)
                           up:foreach_batch(sink.collect)
                           up:map(string.lower):foreach_batch(sink.collect)]]
        run(desc, "a", "B")
        assert.same({ "A", "B" }, sink.batches[1].records)
        assert.same({ "a", "b" }, sink.batches[2].records)
    end)

    it("chains wide operations: a count of the keys after reduce_by_key", function()
        local desc = job [[src:map(function(s) return s, 1 end)
                             :reduce_by_key(function(a, b) return a + b end)
                             :count()
                             :map(function(n) return n * 100 end)
                             :foreach_batch(sink.collect)]]
        assert.same({ 200 }, run(desc, "a", "b", "a"))
    end)

    it("never runs the functions of a stream that reaches no output", function()
        local desc = job [[src:map(function() error("should not run") end)
                           src:foreach_batch(sink.collect)]]
        assert.same({ "a" }, run(desc, "a"))
    end)

    it("keeps the script's upvalues from one batch to the next", function()
        local desc = job [[local seen = 0
                           src:map(function(s) seen = seen + 1; return s .. seen end)
                              :foreach_batch(sink.collect)]]
        run(desc, "a", "b")
        assert.same({ "c3" }, run(desc, "c"))
    end)
end)
