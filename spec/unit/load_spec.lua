-- Loading a job script: the description C gets, and the errors a script
-- author sees (always "path:line: message", never raised).

local H = require "spec.unit.support.helper"
local runtime = require "ember.runtime"


local dir

before_each(function()
    dir = H.tmpdir()
    H.sink()
end)

after_each(function()
    H.rm_rf(dir)
end)


-- Loads src as <dir>/<name>.lua and expects a failure; returns the message
-- with the temp dir replaced by "DIR".
local function load_error(src, name)
    local desc, err = H.load(dir, src, name or "x")
    assert.is_nil(desc)
    assert.is_string(err)
    return (err:gsub(dir:gsub("%p", "%%%0"), "DIR"))
end


describe("runtime.load", function()
    it("describes the job: name, interval, policy, sources with options and lines, outputs", function()
        local desc, err, _, path = H.load(dir, [[
local ember = require "ember"
local job = ember.job { name = "air_quality", batch_interval = "2s", on_error = "dead_letter" }
local a = job:kafka { brokers = "localhost:9092", topic = "datapoints", max_rate = 5000 }
local b = job:redis { url = "redis://localhost", key = "q" }
a:union(b):print(3)
a:foreach_batch(function() end)
return job
]], "aq")
        assert.is_nil(err)
        assert.equal("air_quality", desc.name)
        assert.equal("2s", desc.batch_interval)
        assert.equal("dead_letter", desc.on_error)
        assert.same({
            { type = "kafka", where = path .. ":3",
              options = { brokers = "localhost:9092", topic = "datapoints", max_rate = 5000 } },
            { type = "redis", where = path .. ":4",
              options = { url = "redis://localhost", key = "q" } },
        }, desc.sources)
        assert.same({ { kind = "print", where = path .. ":5" },
                      { kind = "foreach_batch", where = path .. ":6" } }, desc.outputs)
        assert.is_function(desc.run_batch)
    end)

    it("knows every source kind and passes its options through untouched", function()
        local desc = assert(H.load(dir, [[
local job = require("ember").job {}
for _, kind in ipairs { "generator", "socket", "file", "kafka", "rabbitmq", "redis" } do
    job[kind](job, { anything = kind, nested = { 1, 2 } }):print()
end
]]))
        assert.equal(6, #desc.sources)
        assert.equal("rabbitmq", desc.sources[5].type)
        assert.same({ anything = "rabbitmq", nested = { 1, 2 } }, desc.sources[5].options)
    end)

    it("defaults the name to the file name without .lua, the interval to nil, on_error to skip", function()
        local desc = assert(H.load(dir, [[
local job = require("ember").job()
job:socket { port = 9999 }:print()
return job
]], "word_count"))
        assert.equal("word_count", desc.name)
        assert.is_nil(desc.batch_interval)
        assert.equal("skip", desc.on_error)
    end)

    it("uses the one job the script made when the script returns nothing", function()
        local desc = assert(H.load(dir, [[
require("ember").job { name = "implicit" }:generator {}:print()
]]))
        assert.equal("implicit", desc.name)
    end)

    it("lets a job script require cjson and other system modules", function()
        local desc = assert(H.load(dir, [[
local cjson = require "cjson"
local sink = require "test_sink"
local job = require("ember").job {}
job:generator {}:map(cjson.decode):map(function(t) return t.a end):foreach_batch(sink.collect)
return job
]]))
        H.run(desc, 1, { '{"a":"x"}' })
        assert.same({ "x" }, package.loaded.test_sink.last())
    end)

    it("reports a missing file", function()
        local desc, err = runtime.load(dir .. "/nope.lua", H.host())
        assert.is_nil(desc)
        assert.matches("nope.lua", err)
    end)
end)


describe("a script with an error", function()
    it("reports a syntax error as path:line", function()
        assert.equal("DIR/x.lua:3: unexpected symbol near '='",
                     load_error("local ember = require 'ember'\n\nlocal x = = 1\n"))
    end)

    it("reports a runtime error of the script as path:line", function()
        assert.equal("DIR/x.lua:2: attempt to call global 'nothing_here' (a nil value)",
                     load_error("local ember = require 'ember'\nnothing_here()\n"))
    end)

    it("reports a job without outputs at the line of ember.job", function()
        assert.equal("DIR/x.lua:2: job 'quiet' has no output operation", load_error([[
local ember = require "ember"
local job = ember.job { name = "quiet" }
job:generator {}:map(tostring)
return job
]]))
    end)

    it("reports a script that declares no job", function()
        assert.equal("DIR/x.lua: no job declared (call ember.job{...} and return it)",
                     load_error("local ember = require 'ember'\n"))
    end)

    it("reports a script that declares two jobs and returns neither", function()
        assert.matches("2 jobs declared and none returned", load_error([[
local ember = require "ember"
ember.job { name = "a" }:generator {}:print()
ember.job { name = "b" }:generator {}:print()
]]))
    end)

    it("reports a script that returns something other than a job", function()
        assert.matches("the script returned a number", load_error([[
require("ember").job {}:generator {}:print()
return 42
]]))
    end)
end)


describe("misuse of the API", function()
    local function misuse(line)
        return load_error("local ember = require 'ember'\n"
                          .. "local job = ember.job { name = 'm' }\n"
                          .. "local s = job:generator {}\n"
                          .. line .. "\n"
                          .. "s:print()\nreturn job\n")
    end

    it("points at the script line: map without a function", function()
        assert.equal("DIR/x.lua:4: bad argument #1 to 'map' (function expected, got nil)",
                     misuse("s:map()"))
    end)

    it("points at the script line for every transformation taking a function", function()
        for _, op in ipairs { "flat_map", "filter", "reduce", "transform", "foreach_batch",
                              "foreach_record" } do
            assert.equal("DIR/x.lua:4: bad argument #1 to '" .. op
                         .. "' (function expected, got string)",
                         misuse("s:" .. op .. "('nope')"))
        end
    end)

    it("rejects a method called with a dot instead of a colon", function()
        assert.equal("DIR/x.lua:4: calling 'map' on bad self (DStream expected; use stream:map(...))",
                     misuse("s.map(print)"))
        assert.equal("DIR/x.lua:4: calling 'kafka' on bad self (job expected; use job:kafka{...})",
                     misuse("job.kafka { topic = 't' }"))
    end)

    it("wants a table of options for a source", function()
        assert.equal("DIR/x.lua:4: bad argument #1 to 'socket' (table expected, got string)",
                     misuse("job:socket('localhost:9999')"))
    end)

    it("rejects key-value operations on a stream of single values", function()
        assert.matches("^DIR/x.lua:4: 'reduce_by_key' needs a stream of %(key, value%) pairs, "
                       .. "but the stream from 'generator' at DIR/x.lua:3 carries single values",
                       misuse("s:reduce_by_key(math.max)"))
        assert.matches("^DIR/x.lua:4: 'group_by_key' needs", misuse("s:group_by_key()"))
        assert.matches("^DIR/x.lua:4: 'map_values' needs", misuse("s:map_values(tostring)"))
    end)

    it("rejects count_by_value on a stream of pairs", function()
        assert.matches("^DIR/x.lua:4: 'count_by_value' needs a stream of single values",
                       misuse("s:map(function(x) return x, 1 end):reduce_by_key(math.max):count_by_value()"))
    end)

    it("rejects a union with a stream of another job", function()
        assert.matches("^DIR/x.lua:4: bad argument #1 to 'union' %(DStream of the same job expected",
                       misuse("s:union(ember.job { name = 'other' }:generator {})"))
        assert.equal("DIR/x.lua:4: bad argument #1 to 'union' (DStream expected, got table)",
                     misuse("s:union({})"))
    end)

    it("checks print's count and save_as_text_files' names", function()
        assert.equal("DIR/x.lua:4: bad argument #1 to 'print' (positive integer expected, got 0)",
                     misuse("s:print(0)"))
        assert.equal("DIR/x.lua:4: bad argument #1 to 'save_as_text_files' "
                     .. "(non-empty string expected, got nil)", misuse("s:save_as_text_files()"))
        assert.equal("DIR/x.lua:4: bad argument #2 to 'save_as_text_files' "
                     .. "(string expected, got number)", misuse("s:save_as_text_files('p', 1)"))
    end)
end)


describe("ember.job options", function()
    local function bad_job(opts)
        return load_error("local ember = require 'ember'\nlocal job = ember.job " .. opts
                          .. "\njob:generator {}:print()\nreturn job\n")
    end

    it("accept on_error skip, dead_letter or fail only", function()
        assert.equal("DIR/x.lua:2: bad option 'on_error' to 'job' "
                     .. "(\"skip\", \"dead_letter\" or \"fail\" expected, got retry)",
                     bad_job("{ on_error = 'retry' }"))
    end)

    it("want a name of letters, digits, '_', '-' and '.'", function()
        assert.matches("^DIR/x.lua:2: bad option 'name' to 'job'", bad_job("{ name = 'a b' }"))
        assert.matches("^DIR/x.lua:2: bad option 'name' to 'job'", bad_job("{ name = '' }"))
        assert.matches("^DIR/x.lua:2: bad option 'name' to 'job'", bad_job("{ name = 7 }"))
    end)

    it("want a batch_interval with a unit or a number of seconds", function()
        assert.matches("^DIR/x.lua:2: bad option 'batch_interval'", bad_job("{ batch_interval = '2d' }"))
        assert.matches("^DIR/x.lua:2: bad option 'batch_interval'", bad_job("{ batch_interval = 0 }"))
        for _, ok in ipairs { "'500ms'", "'2s'", "'1m'", "'1h'", "1.5" } do
            assert(H.load(dir, "local job = require('ember').job { batch_interval = " .. ok
                               .. " }\njob:generator {}:print()\nreturn job\n"))
        end
    end)

    it("reject an unknown option, such as Spark's camelCase spelling", function()
        assert.matches("^DIR/x.lua:2: bad argument #1 to 'job' %(unknown option 'batchInterval'",
                       bad_job("{ batchInterval = '2s' }"))
    end)

    it("reject a file name that is not a valid job name when no name is given", function()
        assert.matches("may only hold letters", load_error(
            "local job = require('ember').job {}\njob:generator {}:print()\nreturn job\n", "bad name"))
    end)
end)


describe("ember.log", function()
    it("goes through the host's log with the job's name (the file name while loading)", function()
        local desc, _, host = H.load(dir, [[
local ember = require "ember"
ember.log("info", "loading")
local job = ember.job { name = "logger" }
job:generator {}:foreach_batch(function(r, info) ember.log("warn", "got " .. info.count) end)
return job
]])
        H.run(desc, 1, { "a" })
        assert.same({ level = "info", job = "job", msg = "loading" }, host.logs[1])
        assert.same({ level = "warn", job = "logger", msg = "got 1" }, host.logs[2])
    end)

    it("rejects an unknown level", function()
        assert.equal("DIR/x.lua:1: bad argument #1 to 'log' "
                     .. "(one of debug, info, warn, error expected, got loud)",
                     load_error("require('ember').log('loud', 'x')\n"))
    end)
end)
