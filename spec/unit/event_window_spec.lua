-- Event time: what a load refuses, a bad event time, late records
-- dead-lettered and counted, a quiet stream that still closes its windows,
-- and the watermark and windows kept across a load of changed code. The
-- windows' results are checked against a model in
-- event_window_oracle_spec.lua.

local H = require "spec.unit.support.helper"
local view = require "spec.unit.support.view"


local dir, sink

local HEAD = [[
local ember = require "ember"
local sink = require "test_sink"
local job = ember.job { name = "ev", batch_interval = "1s" {{opts}} }
local src = job:generator {}
local ev = src:map(function(s)
    local k, t = s:match("^(%w+)@(%d+)$")
    return { k = k, t = tonumber(t) }
end)
]]

local function load(body, opts)
    return H.load(dir, HEAD:gsub("{{opts}}", opts or "") .. body .. "\nreturn job\n", "job")
end

local function job(body, opts, committed)
    local desc, err, h = load(body, opts)
    assert(desc, err)
    assert(desc.restore(committed or 0))
    return desc, h
end

local function windows(records)
    local t = {}
    for _, p in ipairs(records or {}) do
        t[#t + 1] = p[1] .. " " .. p[2].start .. "-" .. p[2].stop .. " " .. tostring(p[2].value)
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


describe("event-time declarations", function()
    it("refuse an event_window without event time upstream, naming the stream", function()
        local _, err = load("src:map(function(s) return s, 1 end):event_window { size = '5s' }:count():print()")
        assert.matches("job%.lua:9: 'event_window' needs the event time of its records", err)
        assert.matches("the stream from 'map' at .-job%.lua:9 has none", err)
    end)

    it("refuse event_time after a wide operation and with_watermark elsewhere", function()
        local _, err = load("src:map(function(s) return s, 1 end):reduce_by_key(math.max)"
                            .. ":event_time('t'):print()")
        assert.matches("job%.lua:9: 'event_time' must come before any wide or stateful operation", err)
        _, err = load("ev:with_watermark('5s'):print()")
        assert.matches("'with_watermark' is a method of the stream event_time returns", err)
        _, err = load("ev:event_time('t'):with_watermark('soon'):print()")
        assert.matches("bad argument #1 to 'with_watermark'", err)
    end)

    it("refuse bad window options", function()
        local base = "ev:event_time('t'):map(function(e) return e.k, 1 end)"
        local _, err = load(base .. ":event_window { size = '5s', gap = '2s' }:count():print()")
        assert.matches("give size %(tumbling%), size and slide %(sliding%) or gap %(session%)", err)
        _, err = load(base .. ":event_window { size = '5s', slide = '2s' }:count():print()")
        assert.matches("the size must be a multiple of the slide", err)
        _, err = load(base .. ":event_window { size = '5s', emit = 'often' }:count():print()")
        assert.matches("bad option 'emit' to 'event_window'", err)
        _, err = load(base .. ":event_window { gap = '5s' }:aggregate { add = function(a) return a end }:print()")
        assert.matches("a session window merges sessions a record bridges: give merge", err)
        _, err = load(base .. ":event_window { size = '5s', sise = 1 }:count():print()")
        assert.matches("unknown option 'sise'", err)
    end)
end)


describe("event-time windows", function()
    it("let a record without an event time follow on_error", function()
        local desc = job([[
ev:event_time("t"):map(function(e) return e.k, 1 end)
  :event_window { size = "5s" }:count():foreach_batch(sink.collect)]])
        local ok, failed, err = H.run_id(desc, 1, 1000, { "a@100", "nonsense", "b@200" })
        assert.is_true(ok)
        assert.equal(1, failed)
        assert.matches("event_time at .-job%.lua:9: the event time %(field 't'%) is nil", err)
    end)

    it("dead-letter late records and count them per job", function()
        local desc = job([[
ev:event_time("t"):map(function(e) return e.k, 1 end)
  :event_window { size = "5s", late = "dead_letter" }:count():foreach_batch(sink.collect)]])
        H.commit(desc, 1, 1000, { "a@100", "a@12000" })     -- watermark 12000
        assert.same({ "a 0-5000 1" }, windows(sink.last()))
        H.commit(desc, 2, 2000, { "a@3000", "b@4999", "a@11000" })
        assert.same({}, windows(sink.last()))
        assert.equal(2, desc.late_records())
        local dl = H.read(dir .. "/checkpoint/ev/dead_letter.jsonl")
        local n = 0
        for line in dl:gmatch("[^\n]+") do
            n = n + 1
            assert.matches('"error":"late record: every window it falls in is closed"', line)
        end
        assert.equal(2, n)
        assert.matches('"record":"%(a, 1%)"', dl)
        assert.matches('"record":"%(b, 1%)"', dl)
    end)

    it("close the windows of a quiet stream with empty batches", function()
        local desc = job([[
ev:event_time("t"):with_watermark("2s", { idle_timeout = "3s" })
  :map(function(e) return e.k, 1 end)
  :event_window { size = "5s" }:count():foreach_batch(sink.collect)]])
        H.commit(desc, 1, 1000, { "a@1000", "a@2000", "b@4000" })
        local out = {}
        for b = 2, 12 do
            H.commit(desc, b, b * 1000, {})
            if #sink.last() > 0 then
                out[#out + 1] = { b, windows(sink.last()) }
            end
        end
        -- idle after 3 s of batches (at 4000), when the watermark (2000)
        -- starts to move a second per batch: it reaches 5000 at 6000
        assert.same({ { 6, { "a 0-5000 2", "b 0-5000 1" } } }, out)
    end)

    it("hold the watermark for a Kafka partition assigned but not seen, until it is idle",
       function()
        local body = [[
ev:event_time("t"):with_watermark(0, { idle_timeout = "3s" })
  :map(function(e) return e.k, 1 end)
  :event_window { size = "5s" }:count():foreach_batch(sink.collect)]]
        -- partition 0 delivers every batch; partition 1 is assigned (or,
        -- the second time, not known) and quiet. Returns the batches that
        -- emitted, with their windows.
        local function run(assigned)
            H.rm_rf(dir)
            dir = H.tmpdir()
            sink = H.sink()
            local desc = job(body)
            local out = {}
            for b = 1, 6 do
                local v = view.batch(b * 1000, { { value = "a@" .. (b == 1 and 1000 or 7000 + b),
                                                   partition = 0 },
                                                 b == 1 and { value = "a@7000", partition = 0 }
                                                 or nil })
                if assigned then
                    view.assign(v, { { 1, 0 }, { 1, 1 } })
                end
                local ok, failed, err = desc.run_batch(v.ptr, b)
                assert(ok and failed == 0, err)
                assert(desc.prepare(b))
                assert(desc.apply(b))
                if #sink.last() > 0 then
                    out[#out + 1] = { b, windows(sink.last()) }
                end
            end
            return out
        end
        -- idle after 3 s of batches counted from the first record (batch 1)
        assert.same({ { 4, { "a 0-5000 1" } } }, run(true))
        assert.same({ { 1, { "a 0-5000 1" } } }, run(false))
    end)

    it("keep the watermark and the open windows across a load of changed code", function()
        local body = [[
ev:event_time("t"):with_watermark("1s")
  :map(function(e) return e.k, 1 end)
  :event_window { size = "5s", name = "w" }:count()
  :foreach_batch(function(r) sink.collect(r, "%s") end)]]
        local desc = job(body:format("v1"))
        H.commit(desc, 1, 1000, { "a@1000", "a@2000", "a@7000" })  -- watermark 6000
        assert.same({ "a 0-5000 2" }, windows(sink.last()))
        H.commit(desc, 2, 2000, { "a@8000" })
        local desc2 = job(body:format("v2"), nil, 2)
        -- a@5500 is behind the watermark but its window is open: counted
        H.commit(desc2, 3, 3000, { "a@5500", "a@1500", "a@12000" })
        assert.same({ "a 5000-10000 3" }, windows(sink.last()))
        assert.equal(1, desc2.late_records())                    -- a@1500
    end)
end)
