-- Reference tables from a file, and stream:join(table) /
-- left_outer_join(table): loaded before the first batch, re-read when the
-- file changes, a missing file makes the batch wait.

local H = require "spec.unit.support.helper"


local dir, sink

local JOB = [[
local ember = require "ember"
local sink = require "test_sink"
local job = ember.job { name = "t" }
local ads = job:table { from = { file = %q }, refresh = "1s",
                        value = function(field, v) return v ~= "-" and v or nil end }
job:generator {}
   :map(function(s) local k, v = s:match("^(%%w+)=(%%w+)$") return k, v end)
   :%s(ads)
   :foreach_batch(sink.collect)
return job
]]

local function load(kind, path)
    local desc, err, host = H.load(dir, JOB:format(path, kind), "job")
    assert(desc, err)
    return desc, host
end

-- The last batch's records as "k:v|tv" strings, in order.
local function out()
    local t = {}
    for i, p in ipairs(sink.last()) do
        t[i] = p[1] .. ":" .. tostring(p[2][1]) .. "|" .. tostring(p[2][2])
    end
    return t
end

before_each(function()
    dir = H.tmpdir()
    sink = H.sink()
end)

after_each(function()
    H.rm_rf(dir)
end)

describe("reference tables from a file", function()
    it("join looks each record up in the table loaded before the first batch", function()
        local path = dir .. "/ads.tsv"
        H.write(path, "a\tcamp1\nb\tcamp2\n")
        local desc = load("join", path)
        local ok, failed, err = H.run(desc, 1000, { "a=1", "c=2", "b=3", "a=4" })
        assert.is_true(ok, err)
        assert.equal(0, failed)
        assert.same({ "a:1|camp1", "b:3|camp2", "a:4|camp1" }, out())
    end)

    it("left_outer_join keeps the records whose key the table lacks", function()
        local path = dir .. "/ads.tsv"
        H.write(path, "a\tcamp1\n")
        local desc = load("left_outer_join", path)
        assert.is_true((H.run(desc, 1000, { "a=1", "c=2" })))
        assert.same({ "a:1|camp1", "c:2|nil" }, out())
    end)

    it("updates and deletes apply to the batches after the re-read", function()
        local path = dir .. "/ads.tsv"
        H.write(path, "a\tcamp1\nb\tcamp2\n")
        local desc = load("left_outer_join", path)
        assert.is_true((H.run(desc, 1000, { "a=1", "b=2" })))
        assert.same({ "a:1|camp1", "b:2|camp2" }, out())
        -- a changed, b deleted (a nil value), c added
        H.write(path, "a\tcamp9\nb\t-\nc\tcamp3\n")
        -- within the refresh interval: the table is not read again
        assert.is_true((H.run(desc, 1500, { "a=3", "b=4", "c=5" })))
        assert.same({ "a:3|camp1", "b:4|camp2", "c:5|nil" }, out())
        -- past it: read again before this batch
        assert.is_true((H.run(desc, 2000, { "a=6", "b=7", "c=8" })))
        assert.same({ "a:6|camp9", "b:7|nil", "c:8|camp3" }, out())
    end)

    it("a missing file makes the batch wait with a warning, and runs once it is there", function()
        local path = dir .. "/later.tsv"
        local desc, host = load("join", path)
        local ok, failed, err, fatal = H.run(desc, 1000, { "a=1" })
        assert.is_false(ok)
        assert.is_false(fatal)
        assert.equal(0, failed)
        assert.matches("table 'table 1' %(.*job%.lua:4, file .*later%.tsv%) is not loaded yet", err)
        assert.matches("the job waits for its first load", err)
        assert.is_nil(sink.last(), "no batch ran against an empty table")
        local warned = 0
        for _, l in ipairs(host.logs) do
            if l.level == "warn" and l.msg:find("is not loaded yet", 1, true) then
                warned = warned + 1
            end
        end
        assert.equal(1, warned)
        H.write(path, "a\tcamp1\n")
        ok, failed, err = H.run(desc, 1000, { "a=1" })
        assert.is_true(ok, err)
        assert.same({ "a:1|camp1" }, out())
    end)

    it("a file that goes away later keeps the last contents, with one warning", function()
        local path = dir .. "/ads.tsv"
        H.write(path, "a\tcamp1\n")
        local desc, host = load("join", path)
        assert.is_true((H.run(desc, 1000, { "a=1" })))
        os.remove(path)
        assert.is_true((H.run(desc, 2000, { "a=2" })))
        assert.is_true((H.run(desc, 3000, { "a=3" })))
        assert.same({ "a:3|camp1" }, out())
        local warned = 0
        for _, l in ipairs(host.logs) do
            if l.level == "warn" and l.msg:find("cannot read its source", 1, true) then
                warned = warned + 1
            end
        end
        assert.equal(1, warned)
    end)

    it("tells the driver each table's entries, loads, errors and staleness", function()
        local path = dir .. "/ads.tsv"
        local desc = load("join", path)
        assert.same({ { name = "table 1", kind = "file", source = "file " .. path,
                        where = dir .. "/job.lua:4" } }, desc.tables)
        -- not there yet: not loaded, stale, one failed read per attempt
        assert.is_false((H.run(desc, 1000, { "a=1" })))
        assert.is_false((H.run(desc, 1000, { "a=1" })))
        local st = desc.table_status()[1]
        assert.is_false(st.loaded)
        assert.is_true(st.stale)
        assert.equal(2, st.load_errors)
        assert.equal(0, st.entries)
        assert.equal(0, st.last_load_ms)
        assert.matches("ads%.tsv", st.last_error)
        -- there: loaded, fresh, the errors still counted
        H.write(path, "a\tcamp1\nb\tcamp2\n")
        local before = os.time() * 1000
        assert.is_true((H.run(desc, 1000, { "a=1" })))
        st = desc.table_status()[1]
        assert.same({ true, false, 2, 2 }, { st.loaded, st.stale, st.entries, st.load_errors })
        assert.is_true(st.last_load_ms >= before - 1000, tostring(st.last_load_ms))
        -- gone again: stale, the entries kept, one more error
        os.remove(path)
        assert.is_true((H.run(desc, 2000, { "a=2" })))
        st = desc.table_status()[1]
        assert.same({ true, true, 2, 3 }, { st.loaded, st.stale, st.entries, st.load_errors })
        assert.same({ "a:2|camp1" }, out())
    end)

    it("a JSON object file, and key and value functions", function()
        local path = dir .. "/ads.json"
        H.write(path, '{"a": {"campaign": "c1"}, "b": {"campaign": "c2"}}')
        local src = ([[
local ember = require "ember"
local sink = require "test_sink"
local job = ember.job { name = "t" }
local ads = job:table { from = { file = %q, format = "json" },
                        key = function(f) return f:upper() end,
                        value = function(f, v) return v.campaign end }
job:generator {}:map(function(s) return s, 1 end):join(ads):foreach_batch(sink.collect)
return job
]]):format(path)
        local desc, err = H.load(dir, src, "job")
        assert(desc, err)
        assert.is_true((H.run(desc, 1000, { "A", "b", "B" })))
        assert.same({ "A:1|c1", "B:1|c2" }, out())
    end)

    it("skips entries whose value function raises, warning once until their number changes",
       function()
        local path = dir .. "/ads.tsv"
        H.write(path, "a\tcamp1\nbad\tx\n")
        local src = ([[
local ember = require "ember"
local sink = require "test_sink"
local job = ember.job { name = "t" }
local ads = job:table { from = { file = %q }, refresh = "1s",
                        value = function(f, v) if f:find("bad") then error("no campaign") end
                                               return v end }
job:generator {}:map(function(s) return s, 1 end):left_outer_join(ads):foreach_batch(sink.collect)
return job
]]):format(path)
        local desc, err, host = H.load(dir, src, "job")
        assert(desc, err)
        local function warnings()
            local n, last = 0, nil
            for _, l in ipairs(host.logs) do
                if l.level == "warn" and l.msg:find("skipped, their key or value function raised",
                                                    1, true) then
                    n, last = n + 1, l.msg
                end
            end
            return n, last
        end
        assert.is_true((H.run(desc, 1000, { "a", "bad" })))
        assert.same({ "a:1|camp1", "bad:1|nil" }, out())
        local n, msg = warnings()
        assert.equal(1, n)
        assert.matches("1 entry skipped, .*the first, 'bad': .*no campaign", msg)
        H.write(path, "a\tcamp2\nbad\tx\n")           -- read again, still one bad entry
        assert.is_true((H.run(desc, 2000, { "a" })))
        assert.same({ "a:1|camp2" }, out())
        assert.equal(1, (warnings()))
        H.write(path, "a\tcamp2\nbad\tx\nbad2\ty\n")    -- two now
        assert.is_true((H.run(desc, 3000, { "a" })))
        n, msg = warnings()
        assert.equal(2, n)
        assert.matches("2 entries skipped", msg)
    end)

    it("holds a stateful job's batch without staging anything until the table loads", function()
        local path = dir .. "/ads.tsv"
        local src = ([[
local ember = require "ember"
local sink = require "test_sink"
local job = ember.job { name = "t" }
local ads = job:table { from = { file = %q } }
job:generator {}:map(function(s) return s, 1 end):join(ads)
   :map_values(function(p) return p[2] end)
   :update_state_by_key(function(vs, n) return (n or 0) + #vs end, { name = "per_campaign" })
   :foreach_batch(sink.collect)
return job
]]):format(path)
        local desc, err = H.load(dir, src, "job")
        assert(desc, err)
        assert.is_true(desc.stateful)
        assert(desc.restore(0))
        local ok, failed, e, fatal = H.run_id(desc, 1, 1000, { "a", "b", "a" })
        assert.is_false(ok)
        assert.is_false(fatal)
        assert.matches("is not loaded yet", e)
        assert(desc.abort())
        H.write(path, "a\tc1\nb\tc1\n")
        -- update_state_by_key gives its keys in no particular order
        local function sorted(t)
            table.sort(t, function(x, y) return x[1] < y[1] end)
            return t
        end
        H.commit(desc, 1, 1000, { "a", "b", "a" })
        assert.same({ { "a", 2 }, { "b", 1 } }, sorted(sink.last()))
        H.commit(desc, 2, 2000, { "b" })
        assert.same({ { "a", 2 }, { "b", 2 } }, sorted(sink.last()))
    end)

    it("bad declarations fail at the script's line", function()
        local cases = {
            { "job:table { from = { redis = 'redis://x', hash = 'h', pattern = 'p' } }",
              "one of 'hash' or 'pattern'" },
            { "job:table { from = { file = 'x' }, refresh = 'soon' }", "bad option 'refresh'" },
            { "job:table { from = { file = 'x' }, key = 3 }", "bad option 'key'" },
            { "job:table { from = { kafka = 'x' } }", "a Kafka source takes topic" },
            { "job:table { from = {} }", "one of 'redis', 'file' or 'kafka'" },
            { "job:generator {}:join(job:table { from = { file = 'x' } })",
              "'join' needs a stream of %(key, value%) pairs" },
        }
        for _, c in ipairs(cases) do
            local src = "local ember = require 'ember'\nlocal job = ember.job {}\n" .. c[1]
                        .. "\njob:generator {}:print()\nreturn job\n"
            local desc, err = H.load(dir, src, "bad")
            assert.is_nil(desc, c[1])
            assert.matches("bad%.lua:3: .*" .. c[2], err)
        end
    end)
end)
