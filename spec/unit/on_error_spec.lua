-- A user function that raises never takes the driver down: the job's
-- on_error policy decides (skip, dead_letter, fail), and run_batch reports
-- ok, failed, err, fatal as docs/internals.md says.

local H = require "spec.unit.support.helper"
local cjson = require "cjson"


local dir, sink

-- A job named "e" with the given policy; body declares the graph from src.
local function job(policy, body)
    local desc, err, host, path = H.load(dir, [[
local ember = require "ember"
local sink = require "test_sink"
local job = ember.job { name = "e", on_error = "]] .. policy .. [[" }
local src = job:generator {}
]] .. body .. "\nreturn job\n", "e")
    assert(desc, err)
    return desc, host, path
end

local BOOM = [[src:map(function(s) if s:find("bad") then error("boom " .. s) end return s end)
               :foreach_batch(sink.collect)]]

local function dead_letters()
    local text = H.read(dir .. "/checkpoint/e/dead_letter.jsonl")
    local lines = {}
    for line in (text or ""):gmatch("[^\n]+") do
        lines[#lines + 1] = cjson.decode(line)
    end
    return lines, text
end

before_each(function()
    dir = H.tmpdir()
    sink = H.sink()
end)

after_each(function()
    H.rm_rf(dir)
end)


describe("on_error = skip", function()
    it("skips the record whose map raised, counts it and goes on with the next", function()
        local desc, _, path = job("skip", BOOM)
        local ok, failed, err, fatal = H.run(desc, 1000, { "a", "bad1", "b", "bad2", "c" })
        assert.is_true(ok)
        assert.equal(2, failed)
        assert.equal(path .. ":5: boom bad1", err)
        assert.is_false(fatal)
        assert.same({ "a", "b", "c" }, sink.last())
    end)

    it("logs one warning per batch with the count, the first error and the record", function()
        local desc, host, path = job("skip", BOOM)
        H.run(desc, 1000, { "bad1", "a", "bad2" })
        assert.equal(1, #host.logs)
        assert.same({
            level = "warn", job = "e",
            msg = "batch 1000: 2 records failed, skipped; first error: " .. path
                  .. ":5: boom bad1; record: bad1",
        }, host.logs[1])
    end)

    it("logs nothing for a batch without errors", function()
        local desc, host = job("skip", BOOM)
        assert.same({ true, 0, nil, false }, { H.run(desc, 1000, { "a" }) })
        assert.same({}, host.logs)
    end)

    it("shows only the first 200 bytes of a long record in the log", function()
        local desc, host = job("skip", BOOM)
        H.run(desc, 1000, { "bad" .. string.rep("x", 500) })
        local rec = host.logs[1].msg:match("; record: (.*)$")
        assert.equal("bad" .. string.rep("x", 197) .. "...", rec)
    end)

    it("skips a record whose error happens in a wide operation's function", function()
        local desc = job("skip", [[src:map(function(s) return "k", s end)
            :reduce_by_key(function(a, b) return a + b end)
            :foreach_batch(sink.collect)]])
        local ok, failed, err = H.run(desc, 1000, { "1", "2", "x", "3" })
        assert.is_true(ok)
        assert.equal(1, failed)
        assert.matches("attempt to perform arithmetic", err)
        assert.same({ { "k", 6 } }, sink.last())
    end)

    it("skips an element raising downstream of a wide operation", function()
        local desc = job("skip", [[src:map(function(s) return s, 1 end)
            :reduce_by_key(function(a, b) return a + b end)
            :map(function(k, v) if k == "b" then error("no b") end return k .. v end)
            :foreach_batch(sink.collect)]])
        local ok, failed = H.run(desc, 1000, { "a", "b", "c", "a" })
        assert.is_true(ok)
        assert.equal(1, failed)
        assert.same({ "a2", "c1" }, sink.last())
    end)

    it("treats a record reaching a key-value operation without a value as a failed record", function()
        local desc = job("skip", [[src:map(function(s) if s ~= "lonely" then return s, 1 end return s end)
            :reduce_by_key(function(a, b) return a + b end)
            :foreach_batch(sink.collect)]])
        local ok, failed, err = H.run(desc, 1000, { "a", "lonely", "a" })
        assert.is_true(ok)
        assert.equal(1, failed)
        assert.matches("reduce_by_key at .*e.lua:6: %(key, value%) pair expected, got the single value lonely", err)
        assert.same({ { "a", 2 } }, sink.last())
    end)

    it("reports a flat_map function that returns something other than an array", function()
        local desc = job("skip", [[src:flat_map(function(s) return s end):foreach_batch(sink.collect)]])
        local ok, failed, err = H.run(desc, 1000, { "a" })
        assert.is_true(ok)
        assert.equal(1, failed)
        assert.matches("flat_map at .*: function must return an array %(table%), got string", err)
    end)
end)


describe("an output that raises", function()
    it("counts one failure and lets the other outputs of the batch run", function()
        local desc = job("skip", [[
src:foreach_batch(function() error("first output broke") end)
src:foreach_batch(sink.collect)]])
        local ok, failed, err = H.run(desc, 1000, { "a", "b" })
        assert.is_true(ok)
        assert.equal(1, failed)
        assert.matches("first output broke", err)
        assert.same({ "a", "b" }, sink.last())
    end)

    it("in foreach_record fails only the element it raised on", function()
        local desc = job("skip", [[
src:foreach_record(function(s) if s == "b" then error("no b") end table.insert(sink.log, s) end)]])
        local ok, failed = H.run(desc, 1000, { "a", "b", "c" })
        assert.is_true(ok)
        assert.equal(1, failed)
        assert.same({ "a", "c" }, sink.log)
    end)

    it("in transform fails that stream's batch, noted as the batch", function()
        local desc, host = job("skip", [[
src:transform(function() error("no transform") end):foreach_batch(sink.collect)]])
        local ok, failed = H.run(desc, 1000, { "a", "b" })
        assert.is_true(ok)
        assert.equal(1, failed)
        assert.same({}, sink.last())
        assert.matches("record: <batch of 2 records>$", host.logs[1].msg)
    end)

    it("at batch time cannot grow the graph: that is an error of the function", function()
        local desc = job("skip", [[src:foreach_batch(function() src:map(print) end)]])
        local ok, failed, err = H.run(desc, 1000, { "a" })
        assert.is_true(ok)
        assert.equal(1, failed)
        assert.matches("cannot add 'map' to job 'e' once it is loaded", err)
    end)
end)


describe("on_error = dead_letter", function()
    it("appends one JSON line per failed record to <checkpoint>/<job>/dead_letter.jsonl", function()
        local desc, host, path = job("dead_letter", BOOM)
        local ok, failed, err, fatal = H.run(desc, 1000, { "a", "bad1", "bad\n\"2\"" })
        assert.same({ true, 2, path .. ":5: boom bad1", false }, { ok, failed, err, fatal })
        H.run(desc, 2000, { "bad3" })
        local lines, text = dead_letters()
        assert.same({
            { job = "e", batch_time = 1000, error = path .. ":5: boom bad1", record = "bad1" },
            { job = "e", batch_time = 1000, error = path .. ":5: boom bad\n\"2\"", record = "bad\n\"2\"" },
            { job = "e", batch_time = 2000, error = path .. ":5: boom bad3", record = "bad3" },
        }, lines)
        assert.matches('^{"job":"e","batch_time":1000,"error":', text)
        assert.equal(2, #host.logs)
        assert.matches("^batch 1000: 2 records failed, written to .*/checkpoint/e/dead_letter.jsonl; ",
                       host.logs[1].msg)
    end)

    it("writes paths and backslashes readably and decodes back to the exact record", function()
        local desc = job("dead_letter", [[src:map(function(s) error("bad") end):foreach_batch(sink.collect)]])
        H.run(desc, 1000, { "a/b\\/c" })
        local lines, text = dead_letters()
        assert.equal("a/b\\/c", lines[1].record)
        assert.matches('"record":"a/b\\\\/c"', text, 1, true)
    end)

    it("keeps the raw source record when the error happened on the way from the source", function()
        local desc = job("dead_letter", [[src:map(function(s) return s:upper() end)
            :map(function(s) error("late") end):foreach_batch(sink.collect)]])
        H.run(desc, 1000, { "raw" })
        assert.equal("raw", dead_letters()[1].record)
    end)

    it("keeps the element's text when the error happened after a wide operation", function()
        local desc = job("dead_letter", [[src:map(function(s) return s, 1 end)
            :reduce_by_key(function(a, b) return a + b end)
            :foreach_record(function(k, v) error("out") end)]])
        H.run(desc, 1000, { "a", "a" })
        assert.equal("(a, 2)", dead_letters()[1].record)
    end)

    it("notes the batch when foreach_batch raised", function()
        local desc = job("dead_letter", [[src:foreach_batch(function() error("x") end)]])
        H.run(desc, 1000, { "a", "b", "c" })
        assert.equal("<batch of 3 records>", dead_letters()[1].record)
    end)

    it("stops the job when the dead letter file cannot be written", function()
        local desc, err = H.load(dir, [[
local job = require("ember").job { name = "e", on_error = "dead_letter" }
job:generator {}:map(function() error("x") end):print()
return job
]], "e", { checkpoint_dir = "/proc/no/such/dir", log = function() end })
        assert(desc, err)
        local ok, failed, msg, fatal = H.run(desc, 1000, { "a" })
        assert.is_false(ok)
        assert.equal(1, failed)
        assert.matches("^cannot write dead letters to /proc/no/such/dir/e/dead_letter.jsonl: ", msg)
        assert.is_true(fatal)
    end)
end)


describe("on_error = fail", function()
    it("stops the batch at the first error and reports it as fatal", function()
        local desc, host, path = job("fail", BOOM .. "\nsrc:foreach_batch(sink.collect)")
        local ok, failed, err, fatal = H.run(desc, 1000, { "a", "bad1", "bad2" })
        assert.same({ false, 1, path .. ":5: boom bad1", true }, { ok, failed, err, fatal })
        assert.same({}, sink.batches)
        assert.equal("error", host.logs[1].level)
        assert.matches("on_error = fail", host.logs[1].msg)
    end)

    it("stops before the later outputs when an output raises", function()
        local desc = job("fail", [[
src:foreach_batch(function() table.insert(sink.log, "first") end)
src:foreach_batch(function() error("second") end)
src:foreach_batch(function() table.insert(sink.log, "third") end)]])
        local ok, failed, err, fatal = H.run(desc, 1000, { "a" })
        assert.same({ false, 1, true }, { ok, failed, fatal })
        assert.matches("second", err)
        assert.same({ "first" }, sink.log)
    end)
end)


describe("run_batch", function()
    it("reports a malformed view as a fatal internal error instead of raising", function()
        local desc = job("skip", [[src:foreach_batch(sink.collect)]])
        local ok, failed, err, fatal = H.run(desc, 1000, { source = 3, "a" })
        assert.is_false(ok)
        assert.equal(0, failed)
        assert.matches("internal error: .*block 0 names source 3, the job has 1", err)
        assert.is_true(fatal)
    end)
end)
