-- format = "bytes": a source's elements are views of the records' bytes
-- (ember.bytes). Their methods give what the string library gives on the
-- record's string; they become strings where they reach anything that may
-- keep them; a view kept past its batch raises instead of reading a block
-- that is gone.

local H = require "spec.unit.support.helper"
local bytes = require "ember.bytes"
local ffi = require "ffi"


local dir, sink

before_each(function()
    dir = H.tmpdir()
    sink = H.sink()
end)

after_each(function()
    H.rm_rf(dir)
end)


local function job(body, opts)
    local desc, err = H.load(dir, [[
local ember = require "ember"
local sink = require "test_sink"
local job = ember.job { name = "b", on_error = "]] .. ((opts or {}).on_error or "skip") .. [[" }
local src = job:socket { port = 1, format = "bytes" }
]] .. body .. "\nreturn job\n", "b")
    assert(desc, err)
    return desc
end


-- A view of s in a buffer of its own (kept in `keep`), valid until
-- bytes.finish(); the buffer has a byte after s that must never be read.
local keep = {}
local function view_of(s)
    local buf = ffi.new("char[?]", #s + 1)
    ffi.copy(buf, s, #s)
    buf[#s] = 33                                -- '!': past the view
    keep[#keep + 1] = buf
    return bytes.view(buf, #s)
end


-- -0 and nil compare as themselves.
local function same_number(a, b)
    if a == nil or b == nil then
        return a == b
    end
    return a == b and 1 / a == 1 / b or (a ~= a and b ~= b)
end


describe("a bytes view", function()
    before_each(function()
        bytes.begin()
    end)
    after_each(function()
        bytes.finish()
        keep = {}
    end)

    it("gives what string.sub, byte, find and # give on the record's string", function()
        local texts = { "", "a", "abc", '{"dev":"aq-538","pm25":10.9,"co2":1434,"t":31.5}',
                        "key-000042 xxxxxxxxxx", "a.b.c", "%d+ (x)" }
        local needles = { "", "a", "b", "c", ".", '"pm25":', ",", "x", "xx", "key", "zz", "%d+",
                          "(x)", "31.5}" }
        local checked = 0
        for _, s in ipairs(texts) do
            local v = view_of(s)
            assert.equal(#s, #v)
            assert.equal(#s, v:len())
            assert.equal(s, tostring(v))
            for i = -#s - 2, #s + 2 do
                assert.same({ s:byte(i) }, { v:byte(i) })
                assert.equal(s:sub(i), v:sub(i))
                for j = -#s - 2, #s + 2 do
                    assert.equal(s:sub(i, j), v:sub(i, j), ("sub(%d, %d) of %q"):format(i, j, s))
                    assert.equal(s:sub(i, j), tostring(v:view(i, j)))
                    checked = checked + 1
                end
                for _, n in ipairs(needles) do
                    assert.same({ s:find(n, i, true) }, { v:find(n, i, true) },
                                ("find(%q, %d, true) in %q"):format(n, i, s))
                    assert.same({ s:find(n, i) }, { v:find(n, i) },
                                ("find(%q, %d) in %q"):format(n, i, s))
                end
            end
            assert.same({ s:byte(1, -1) }, { v:byte(1, -1) })
            for _, n in ipairs(needles) do
                assert.same({ s:find(n) }, { v:find(n) })
            end
        end
        assert.is_true(checked > 1000)
    end)

    it("compares, concatenates and takes the other string methods as its string", function()
        local s = '{"dev":"aq-538","pm25":10.9}'
        local v = view_of(s)
        assert.is_true(v == s)
        assert.is_false(v == s .. " ")
        assert.is_true(v == view_of(s))
        assert.is_false(v == view_of("other"))
        assert.is_true(v ~= nil)
        assert.equal(s .. "!", v .. "!")
        assert.equal("!" .. s, "!" .. v)
        assert.equal(s:sub(1, -2) .. ',"level":"good"}', v:view(1, -2) .. ',"level":"' .. "good" .. '"}')
        assert.equal("dev 1.5 " .. s, v:view(3, 5) .. " " .. 1.5 .. " " .. v)
        assert.equal("10.9", tostring(v:view(24):view(1, 4)))
        assert.equal(10.9, v:view(24, 27):tonumber())
        local ok, err = pcall(function() return v .. {} end)
        assert.is_false(ok)
        assert.matches("attempt to concatenate a table value", err)
        assert.equal("10.9", v:match('"pm25":([%d.]+)'))
        assert.equal(s:upper(), v:upper())
        assert.same({ s:gsub('"', "'") }, { v:gsub('"', "'") })
        assert.equal("cdata", type(v))
    end)

    it("reads numbers bit for bit as tonumber reads the same bytes", function()
        local cases = { "0", "-0", "12.5", "-12.5", "1633", ".5", "-.5", "5.", "-", ".", "",
                        "00012", "0.1", "0.3", "2.675", "9007199254740993", "123456789012345",
                        "1234567890123456", "0.000000000000001", "999999999999999.9",
                        "1e5", "1E-3", "0x1F", "  7", "7  ", "+7", "1.2.3", "12a", "a12",
                        "--1", "-0.0", "3.14159265358979", "nan", "inf", "1,5", "17.", "0.",
                        "4294967296", "-9.875", "123456.7890123" }
        -- and random plain decimals of every length and dot position
        math.randomseed(7)
        for _ = 1, 3000 do
            local n = math.random(1, 18)
            local t = {}
            for k = 1, n do
                t[k] = tostring(math.random(0, 9))
            end
            if math.random() < 0.7 then
                table.insert(t, math.random(1, n + 1), ".")
            end
            if math.random() < 0.3 then
                table.insert(t, 1, "-")
            end
            cases[#cases + 1] = table.concat(t)
        end
        for _, s in ipairs(cases) do
            local v = view_of("[" .. s .. "]")
            assert.is_true(same_number(tonumber(s), v:tonumber(2, -2)),
                           ("%q: tonumber %s, view %s"):format(s, tostring(tonumber(s)),
                                                              tostring(v:tonumber(2, -2))))
            local w = view_of(s)
            assert.is_true(same_number(tonumber(s), w:tonumber()), s)
        end
    end)

    it("raises when it is read after its batch, naming the view, and reads nothing", function()
        local v = view_of("secret")
        assert.equal("secret", v:sub(1))
        bytes.finish()
        bytes.begin()                           -- the next batch
        for _, read in ipairs {
            function() return v:sub(1, 2) end,
            function() return #v end,
            function() return tostring(v) end,
            function() return v:find("e", 1, true) end,
            function() return v:tonumber() end,
            function() return v:byte(1) end,
            function() return v == "secret" end,
            function() return v .. "" end,
            function() return v:upper() end,
            function() return v:view(1, 2) end,
        } do
            local ok, err = pcall(read)
            assert.is_false(ok)
            assert.matches('a bytes view %(format = "bytes"%) used after its batch', err)
        end
        assert.is_true(v ~= nil)                -- a test for nil reads no byte
    end)
end)


describe("format = \"bytes\"", function()
    it("hands views to narrow functions and strings to wide operations and outputs", function()
        local desc = job([[
local seen = sink.log
src:filter(function(v) seen[#seen + 1] = type(v); return v:find("a", 1, true) ~= nil end)
   :count_by_value()
   :foreach_batch(sink.collect)]])
        local ok, failed = H.run(desc, 1000, { "apple", "pear", "apple", "plum", "banana" })
        assert.is_true(ok)
        assert.equal(0, failed)
        assert.same({ "cdata", "cdata", "cdata", "cdata", "cdata" }, sink.log)
        assert.same({ { "apple", 2 }, { "pear", 1 }, { "banana", 1 } }, sink.last())
        assert.equal("string", type(sink.last()[1][1]))
    end)

    it("gives outputs the records as strings where a map returns the view itself", function()
        local desc = job([[
src:map(function(v) return v:sub(1, 3), v end):foreach_batch(sink.collect)
src:map(function(v) return v end):foreach_record(function(x) sink.log[#sink.log + 1] = x end)]])
        local ok, failed = H.run(desc, 1000, { "key-1 one", "key-2 two" })
        assert.is_true(ok)
        assert.equal(0, failed)
        assert.same({ { "key", "key-1 one" }, { "key", "key-2 two" } }, sink.last())
        assert.equal("string", type(sink.last()[1][2]))
        assert.same({ "key-1 one", "key-2 two" }, sink.log)
    end)

    it("gives joins and reductions the views' strings as values", function()
        local desc = job([[
local kv = src:map(function(v) return v:sub(1, 1), v end)
kv:join(kv:filter(function(k, v) return v:find("2", 1, true) end))
  :foreach_batch(function(r) sink.log.joined = r end)
kv:reduce_by_key(function(a, b) return a .. "+" .. b end)
  :foreach_batch(sink.collect)]])
        local ok, failed = H.run(desc, 1000, { "a1", "b1", "a2" })
        assert.is_true(ok)
        assert.equal(0, failed)
        assert.same({ { "a", "a1+a2" }, { "b", "b1" } }, sink.last())
        assert.same({ { "a", { "a1", "a2" } }, { "a", { "a2", "a2" } } }, sink.log.joined)
        assert.equal("string", type(sink.log.joined[1][2][1]))
    end)

    it("keeps the same keyed state as the string records, over many compiled batches", function()
        local function counts(format)
            sink = H.sink()
            local d = H.tmpdir()
            local desc, err = H.load(d, [[
local ember = require "ember"
local sink = require "test_sink"
local job = ember.job { name = "c" }
job:socket { port = 1, format = "]] .. format .. [[" }
  :map(function(s)
      local sp = s:find(" ", 1, true)
      return s:sub(1, sp - 1), s.tonumber and s:tonumber(sp + 1) or tonumber(s:sub(sp + 1))
  end)
  :map_with_state { name = "sums", fn = function(key, value, state)
      state:set((state:get() or 0) + value)
  end }
  :state_snapshots()
  :foreach_batch(sink.collect)
return job
]], "c")
            assert(desc, err)
            math.randomseed(11)
            local got = {}
            for b = 1, 6 do
                local recs = {}
                for i = 1, 3000 do
                    recs[i] = ("k%03d %d.%d"):format(math.random(0, 300), math.random(-50, 50),
                                                     math.random(0, 9))
                end
                H.commit(desc, b, b * 1000, recs)
                local snap = {}
                for _, kv in ipairs(sink.last()) do
                    snap[kv[1]] = kv[2]
                end
                got[b] = snap
            end
            H.rm_rf(d)
            return got
        end
        local want, got = counts("value"), counts("bytes")
        assert.equal(6, #got)
        assert.is_true(next(got[6]) ~= nil)
        assert.same(want, got)
    end)

    it("sets a record whose function raises aside by on_error, with its text", function()
        local desc = job([[src:map(function(v)
    if v:find("bad", 1, true) then error("no: " .. v:sub(1, 3), 0) end
    return v:sub(1, 1)
end):foreach_batch(sink.collect)]], { on_error = "dead_letter" })
        local ok, failed, err = H.run(desc, 1000, { "a1", "bad record", "b2" })
        assert.is_true(ok)
        assert.equal(1, failed)
        assert.equal("no: bad", err)
        assert.same({ "a", "b" }, sink.last())
        local text = H.read(dir .. "/checkpoint/b/dead_letter.jsonl")
        assert.matches('"record":"bad record"', text)
    end)

    it("fails the record, not the job, when a view kept from an earlier batch is read", function()
        local desc = job([[
local kept
src:map(function(v)
    if kept then return kept:sub(1, 3) end
    kept = v
    return v:sub(1, 3)
end):foreach_batch(sink.collect)]])
        local ok, failed = H.run(desc, 1000, { "one" })
        assert.is_true(ok)
        assert.equal(0, failed)
        assert.same({ "one" }, sink.last())
        local ok2, failed2, err2 = H.run(desc, 2000, { "two", "three" })
        assert.is_true(ok2)
        assert.equal(2, failed2)
        assert.matches('used after its batch', err2)
    end)
end)
