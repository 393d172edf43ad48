-- Output operations: order, print, save_as_text_files, foreach_*.

local H = require "spec.unit.support.helper"


local dir, sink

local function job(body, name)
    local desc, err = H.load(dir, [[
local ember = require "ember"
local sink = require "test_sink"
local job = ember.job { name = "]] .. (name or "out") .. [[" }
local src = job:generator {}
]] .. body .. "\nreturn job\n")
    assert(desc, err)
    return desc
end

local function run(desc, time, ...)
    local ok, failed, err, fatal = H.run(desc, time, { ... })
    assert.is_true(ok)
    assert.equal(0, failed, err)
    assert.is_false(fatal)
end

before_each(function()
    dir = H.tmpdir()
    sink = H.sink()
end)

after_each(function()
    H.rm_rf(dir)
end)


describe("outputs", function()
    it("run in declaration order every batch, whatever stream they hang off", function()
        local desc = job [[
local up = src:map(string.upper)
up:foreach_batch(function() table.insert(sink.log, "first") end)
src:foreach_record(function(s) table.insert(sink.log, "second:" .. s) end)
up:map(function(s) return s, 1 end):reduce_by_key(function(a, b) return a + b end)
  :foreach_batch(function() table.insert(sink.log, "third") end)
src:foreach_batch(function() table.insert(sink.log, "fourth") end)
]]
        run(desc, 1000, "a", "b")
        run(desc, 2000, "c")
        assert.same({ "first", "second:a", "second:b", "third", "fourth",
                      "first", "second:c", "third", "fourth" }, sink.log)
    end)

    it("chain: each output returns the stream it hangs off", function()
        local desc = job [[src:foreach_batch(sink.collect):map(string.upper):foreach_batch(sink.collect)]]
        run(desc, 1000, "a")
        assert.same({ "a" }, sink.batches[1].records)
        assert.same({ "A" }, sink.batches[2].records)
    end)
end)


describe("foreach_batch", function()
    it("gets the records as an array and the batch info (time, job, count)", function()
        local desc = job([[src:foreach_batch(sink.collect)]], "info_job")
        run(desc, 1700000000123, "a", "b")
        assert.same({ "a", "b" }, sink.batches[1].records)
        assert.same({ time = 1700000000123, job = "info_job", count = 2 }, sink.batches[1].info)
    end)

    it("is called for an empty batch too, with an empty array", function()
        local desc = job [[src:foreach_batch(sink.collect)]]
        run(desc, 1000)
        assert.same({}, sink.last())
        assert.equal(0, sink.batches[1].info.count)
    end)
end)


describe("foreach_record", function()
    it("calls the function once per element, with (key, value) on a keyed stream", function()
        local desc = job [[
src:map(function(s) return s, #s end)
   :foreach_record(function(k, v) table.insert(sink.log, k .. "/" .. v) end)
]]
        run(desc, 1000, "a", "bcd")
        assert.same({ "a/1", "bcd/3" }, sink.log)
    end)
end)


describe("print", function()
    it("writes Spark's layout: dashes, the batch time and job, the elements, a blank line", function()
        local desc = job([[src:print()]], "printer")
        local out = H.capture(function() run(desc, 1700000000000, "a", "b") end)
        assert.equal("-------------------------------------------\n"
                     .. "Time: 1700000000000 ms (printer)\n"
                     .. "-------------------------------------------\n"
                     .. "a\nb\n\n", out)
    end)

    it("shows the first n elements, then '...' when there are more", function()
        local desc = job([[src:print(2)]], "p")
        local out = H.capture(function() run(desc, 5, "1", "2", "3") end)
        assert.equal("-------------------------------------------\nTime: 5 ms (p)\n"
                     .. "-------------------------------------------\n1\n2\n...\n\n", out)
    end)

    it("shows ten elements by default", function()
        local desc = job([[src:print()]], "p")
        local recs = {}
        for i = 1, 11 do recs[i] = tostring(i) end
        local out = H.capture(function() run(desc, 5, unpack(recs)) end)
        assert.matches("\n10\n...\n\n$", out)
        assert.not_matches("\n11\n", out)
    end)

    it("shows pairs as (key, value) and tables in braces", function()
        local desc = job([[src:map(function(s) return s, 2 end):group_by_key()
                              :map_values(function(vs) return { n = #vs, vs = vs } end)
                              :print()]], "p")
        local out = H.capture(function() run(desc, 5, "a", "a", "b") end)
        assert.equal("-------------------------------------------\nTime: 5 ms (p)\n"
                     .. "-------------------------------------------\n"
                     .. "(a, {n = 2, vs = {2, 2}})\n(b, {n = 1, vs = {2}})\n\n", out)
    end)

    it("prints just the header for an empty batch", function()
        local desc = job([[src:print()]], "p")
        local out = H.capture(function() run(desc, 5) end)
        assert.equal("-------------------------------------------\nTime: 5 ms (p)\n"
                     .. "-------------------------------------------\n\n", out)
    end)

    it("prints nothing for an empty batch with empty = false, and the batch when it has records", function()
        local desc = job([[src:print(10, { empty = false })]], "p")
        assert.equal("", H.capture(function() run(desc, 5) end))
        local out = H.capture(function() run(desc, 6, "x") end)
        assert.equal("-------------------------------------------\nTime: 6 ms (p)\n"
                     .. "-------------------------------------------\nx\n\n", out)
    end)
end)


describe("save_as_text_files", function()
    local function ls(d)
        local p = io.popen("ls -A '" .. d .. "' 2>/dev/null")
        local names = {}
        for line in p:lines() do names[#names + 1] = line end
        p:close()
        return names
    end

    it("writes one file per batch named <prefix>-<time_ms>.<suffix>, one element per line", function()
        local desc = job([[src:save_as_text_files("]] .. dir .. [[/out/words", "txt")]])
        run(desc, 1000, "a", "b")
        run(desc, 2000, "c")
        assert.same({ "words-1000.txt", "words-2000.txt" }, ls(dir .. "/out"))
        assert.equal("a\nb\n", H.read(dir .. "/out/words-1000.txt"))
        assert.equal("c\n", H.read(dir .. "/out/words-2000.txt"))
    end)

    it("writes a pair as key<TAB>value", function()
        local desc = job([[src:map(function(s) return s, #s end)
                              :save_as_text_files("]] .. dir .. [[/kv")]])
        run(desc, 7, "ab", "c")
        assert.equal("ab\t2\nc\t1\n", H.read(dir .. "/kv-7"))
    end)

    it("writes no file for an empty batch and leaves no temp file behind", function()
        local desc = job([[src:save_as_text_files("]] .. dir .. [[/o/x", "txt")]])
        run(desc, 1, "a")
        run(desc, 2)
        assert.same({ "x-1.txt" }, ls(dir .. "/o"))
    end)

    it("replaces a file of the same batch time atomically (rename over it)", function()
        local desc = job([[src:save_as_text_files("]] .. dir .. [[/r", "txt")]])
        run(desc, 1, "old")
        run(desc, 1, "new")
        assert.equal("new\n", H.read(dir .. "/r-1.txt"))
        assert.is_nil(H.read(dir .. "/r-1.txt.tmp"))
    end)
end)


describe("outputs that stream, on a batch of several chunks", function()
    local CHUNK = require("ember.executor").SINK_CHUNK
    local N = CHUNK * 2 + 5

    local function records()
        local recs = {}
        for i = 1, N do recs[i] = "r" .. i end
        return recs
    end

    local function run_big(desc, time)
        local ok, failed, err, fatal = H.run(desc, time, records())
        assert.is_true(ok)
        assert.equal(0, failed, err)
        assert.is_false(fatal)
    end

    it("save_as_text_files writes every element in order, to the temp file while the batch runs", function()
        -- The map runs before the output of the same element: when it sees
        -- the last one, the earlier chunks must already be in the file.
        local desc = job([[
local seen
src:map(function(s)
        if s == "r]] .. N .. [[" then
            local f = io.open("]] .. dir .. [[/o/big-3.tmp", "rb")
            seen = f and #f:read("*a") or -1
            if f then f:close() end
            table.insert(sink.log, seen)
        end
        return s
    end)
   :save_as_text_files("]] .. dir .. [[/o/big")]])
        run_big(desc, 3)
        local want = table.concat(records(), "\n") .. "\n"
        assert.equal(want, H.read(dir .. "/o/big-3"))
        assert.is_nil(H.read(dir .. "/o/big-3.tmp"))
        -- two whole chunks were written before the last element came
        local two_chunks = #table.concat(records(), "\n", 1, CHUNK * 2) + 1
        assert.equal(two_chunks, sink.log[1])
    end)

    it("save_as_text_files that cannot write leaves no temp file and follows on_error", function()
        H.write(dir .. "/blocker", "a file where a folder should be")
        local desc = job([[src:save_as_text_files("]] .. dir .. [[/blocker/x")]])
        local ok, failed, err = H.run(desc, 4, records())
        assert.is_true(ok)                -- on_error = "skip": the output's batch is skipped
        assert.equal(1, failed)
        assert.matches("save_as_text_files", err)
    end)

    it("print shows the first n elements and '...' for the rest", function()
        local desc = job([[src:print(3)]], "p")
        local out = H.capture(function() run_big(desc, 5) end)
        assert.equal("-------------------------------------------\nTime: 5 ms (p)\n"
                     .. "-------------------------------------------\nr1\nr2\nr3\n...\n\n", out)
    end)

    it("foreach_record sees every element once, and skips only the one that raised", function()
        local desc = job([[
src:foreach_record(function(s)
    if s == "r]] .. (CHUNK + 7) .. [[" then error("bad record") end
    sink.log[#sink.log + 1] = s
end)]])
        local ok, failed, err = H.run(desc, 6, records())
        assert.is_true(ok)
        assert.equal(1, failed)
        assert.matches("bad record", err)
        assert.equal(N - 1, #sink.log)
        assert.equal("r" .. (CHUNK + 6), sink.log[CHUNK + 6])
        assert.equal("r" .. (CHUNK + 8), sink.log[CHUNK + 7])
        assert.equal("r" .. N, sink.log[N - 1])
    end)
end)
