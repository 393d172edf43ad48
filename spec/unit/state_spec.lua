-- Keyed state: update_state_by_key, map_with_state, state_snapshots, and
-- the store's staged lifecycle (prepare / apply / abort / restore), its
-- files, migrate, archives and state.max.

local H = require "spec.unit.support.helper"
local files = require "ember.state_files"


local dir, sink

local HEAD = [[
local ember = require "ember"
local sink = require "test_sink"
]]

-- Loads a job with the given ember.job options (a Lua table literal) and body.
local function job(body, opts, name, host)
    local desc, err, h = H.load(dir, HEAD .. "local job = ember.job " .. (opts or "{ name = 't' }")
                                 .. "\nlocal src = job:generator {}\n" .. body
                                 .. "\nreturn job\n", name, host)
    assert(desc, err)
    return desc, h
end

local function pairs_of(records)
    local t = {}
    for _, r in ipairs(records or {}) do
        t[r[1]] = r[2]
    end
    return t
end

local COUNT = [[
src:map(function(s) return s, 1 end)
   :update_state_by_key(function(values, n) return (n or 0) + #values end, { name = "counts" })
   :foreach_batch(sink.collect)
]]

local MWS_COUNT = [[
src:map(function(s) return s, 1 end)
   :map_with_state { name = "counts", fn = function(k, v, state)
       local n = (state:get() or 0) + v
       state:set(n)
       return k, n
   end }
   :foreach_batch(sink.collect)
]]

local function ls(path)
    local names = files.list(path)
    return names or {}
end

before_each(function()
    dir = H.tmpdir()
    sink = H.sink()
end)

after_each(function()
    H.rm_rf(dir)
end)


describe("update_state_by_key", function()
    it("keeps a running count per key across committed batches", function()
        local desc = job(COUNT)
        assert.is_true(desc.stateful)
        assert.is_true(desc.restore(0))
        H.commit(desc, 1, 1000, { "a", "b", "a" })
        assert.same({ a = 2, b = 1 }, pairs_of(sink.last()))
        H.commit(desc, 2, 2000, { "b", "c" })
        assert.same({ a = 2, b = 2, c = 1 }, pairs_of(sink.last()))
    end)

    it("calls the function for every key with state, with no values when none came", function()
        local desc = job [[
src:map(function(s) return s, 1 end)
   :update_state_by_key(function(values, n)
       sink.log[#sink.log + 1] = #values
       return (n or 0) + #values
   end)
   :foreach_batch(sink.collect)
]]
        H.commit(desc, 1, 1000, { "a", "b" })
        sink.log = {}
        H.commit(desc, 2, 2000, {})
        assert.same({ 0, 0 }, sink.log)
        assert.same({ a = 1, b = 1 }, pairs_of(sink.last()))
    end)

    it("removes a key whose function returns nil", function()
        local desc = job [[
src:map(function(s) return s, 1 end)
   :update_state_by_key(function(values, n)
       if #values == 0 then return nil end
       return (n or 0) + #values
   end)
   :foreach_batch(sink.collect)
]]
        H.commit(desc, 1, 1000, { "a", "b" })
        H.commit(desc, 2, 2000, { "a" })
        assert.same({ a = 2 }, pairs_of(sink.last()))
        assert.same({ ["update_state_by_key#1"] = 12 }, desc.state_bytes())   -- "a" 3 + a number 9
    end)

    it("hands read-only values to keys without new records", function()
        local desc = job [[
src:map(function(s) return s, 1 end)
   :update_state_by_key(function(values, n) values[1] = 5; return 1 end)
   :foreach_batch(sink.collect)
]]
        H.commit(desc, 1, 1000, { "a" })
        local ok, failed, err = H.run_id(desc, 2, 2000, {})
        assert.is_true(ok)
        assert.equal(1, failed)
        assert.matches("read%-only", err)
    end)
end)


describe("map_with_state", function()
    it("gives fn (key, value, state) per record and sends on what it returns", function()
        local desc = job(MWS_COUNT)
        H.commit(desc, 1, 1000, { "a", "b", "a" })
        assert.same({ { "a", 1 }, { "b", 1 }, { "a", 2 } }, sink.last())
        H.commit(desc, 2, 2000, { "a" })
        assert.same({ { "a", 3 } }, sink.last())
    end)

    it("touches only the keys with records", function()
        local desc = job [[
src:map(function(s) return s, 1 end)
   :map_with_state { fn = function(k, v, state)
       sink.log[#sink.log + 1] = k
       state:set(1)
   end }
   :foreach_batch(sink.collect)
]]
        H.commit(desc, 1, 1000, { "a", "b" })
        sink.log = {}
        H.commit(desc, 2, 2000, { "b" })
        assert.same({ "b" }, sink.log)
    end)

    it("has exists, remove and a state_snapshots stream of every key", function()
        local desc = job [[
local m = src:map(function(s) return s:match("^(%w+)=?(.*)$") end)
   :map_with_state { fn = function(k, v, state)
       local had = state:exists()
       if v == "del" then state:remove() else state:set(v) end
       return k .. (had and ":had" or ":new")
   end }
m:foreach_batch(function(r) sink.log[#sink.log + 1] = r end)
m:state_snapshots():foreach_batch(sink.collect)
]]
        H.commit(desc, 1, 1000, { "a=1", "b=2" })
        assert.same({ a = "1", b = "2" }, pairs_of(sink.last()))
        H.commit(desc, 2, 2000, { "a=del", "c=3", "b=9" })
        assert.same({ b = "9", c = "3" }, pairs_of(sink.last()))
        assert.same({ "a:had", "c:new", "b:had" }, sink.log[2])
    end)

    it("times out a key idle for the timeout: one last call, then it is removed", function()
        local desc = job [[
local m = src:map(function(s) return s, 1 end)
   :map_with_state { timeout = "10s", fn = function(k, v, state)
       if state:is_timing_out() then
           return "timeout " .. k .. "=" .. state:get()
       end
       state:set((state:get() or 0) + 1)
   end }
m:foreach_batch(sink.collect)
m:state_snapshots():foreach_batch(function(r) sink.log[#sink.log + 1] = r end)
]]
        H.commit(desc, 1, 1000, { "a", "b", "a" })
        H.commit(desc, 2, 6000, { "b" })
        assert.same({}, sink.last())
        H.commit(desc, 3, 11000, {})            -- a idle 10 s: times out; b 5 s
        assert.same({ "timeout a=2" }, sink.last())
        assert.same({ b = 2 }, pairs_of(sink.log[3]))
        H.commit(desc, 4, 12000, {})
        assert.same({}, sink.last())
        H.commit(desc, 5, 16000, {})
        assert.same({ "timeout b=2" }, sink.last())
        assert.same({}, pairs_of(sink.log[5]))
        H.commit(desc, 6, 30000, { "a" })        -- a comes back fresh
        assert.same({ a = 1 }, pairs_of(sink.log[6]))
    end)

    it("keeps timeouts across a restore from the files", function()
        local body = [[
src:map(function(s) return s, 1 end)
   :map_with_state { timeout = "10s", fn = function(k, v, state)
       if state:is_timing_out() then return "timeout " .. k end
       state:set(1)
   end }
   :foreach_batch(sink.collect)
]]
        local desc = job(body)
        H.commit(desc, 1, 1000, { "a" })
        H.commit(desc, 2, 8000, { "b" })
        local again = job(body)
        assert.is_true(again.restore(2))
        H.commit(again, 3, 12000, {})
        assert.same({ "timeout a" }, sink.last())
        H.commit(again, 4, 18000, {})
        assert.same({ "timeout b" }, sink.last())
    end)

    it("refuses state:set while a key times out", function()
        local desc = job [[
src:map(function(s) return s, 1 end)
   :map_with_state { timeout = 1, fn = function(k, v, state) state:set(1) end }
   :foreach_batch(sink.collect)
]]
        H.commit(desc, 1, 1000, { "a" })
        local ok, failed, err = H.run_id(desc, 2, 5000, {})
        assert.is_true(ok)
        assert.equal(1, failed)
        assert.matches("timing out", err)
        assert.is_true(desc.prepare(2))
        assert.is_true(desc.apply(2))
        assert.same({ ["map_with_state#1"] = 0 }, desc.state_bytes())
    end)

    it("leaves the state of a record whose fn raised as it was", function()
        local desc = job [[
src:map(function(s) return s, 1 end)
   :map_with_state { fn = function(k, v, state)
       state:set((state:get() or 0) + 1)
       if k == "bad" then error("boom") end
       return k, state:get()
   end }
   :foreach_batch(sink.collect)
]]
        local ok, failed = H.run_id(desc, 1, 1000, { "a", "bad", "a", "bad" })
        assert.is_true(ok)
        assert.equal(2, failed)
        assert.is_true(desc.prepare(1))
        assert.is_true(desc.apply(1))
        H.commit(desc, 2, 2000, { "a" })
        assert.same({ { "a", 3 } }, sink.last())
        local names = {}
        for n in pairs(desc.state_bytes()) do names[#names + 1] = n end
        assert.same({ "map_with_state#1" }, names)
    end)

    it("hands state:get() a copy of a table, so only set() changes it", function()
        local desc = job [[
src:map(function(s) return s, 1 end)
   :map_with_state { fn = function(k, v, state)
       local t = state:get() or { n = 0 }
       t.n = t.n + 1
       if t.n ~= 2 then state:set(t) end   -- the second change is never set
       return k, t.n
   end }
   :state_snapshots():foreach_batch(sink.collect)
]]
        H.commit(desc, 1, 1000, { "a" })
        H.commit(desc, 2, 2000, { "a" })
        assert.same({ a = { n = 1 } }, pairs_of(sink.last()))
    end)
end)


describe("the staged lifecycle", function()
    it("shows a batch's changes to the next batch only after apply", function()
        local desc = job(MWS_COUNT)
        assert.is_true((H.run_id(desc, 1, 1000, { "a" })))
        -- no prepare/apply: the next run starts from the committed state
        assert.is_true((H.run_id(desc, 1, 1000, { "a" })))
        assert.same({ { "a", 1 } }, sink.last())
        assert.is_true(desc.prepare(1))
        assert.is_true(desc.apply(1))
        H.commit(desc, 2, 2000, { "a" })
        assert.same({ { "a", 2 } }, sink.last())
    end)

    it("drops the staged changes on abort, also after prepare, so a retry counts once", function()
        local desc = job(MWS_COUNT)
        H.commit(desc, 1, 1000, { "a" })
        assert.is_true((H.run_id(desc, 2, 2000, { "a", "b" })))
        assert.is_true(desc.prepare(2))
        assert.is_true(desc.abort())
        H.commit(desc, 2, 2000, { "a", "b" })
        assert.same({ { "a", 2 }, { "b", 1 } }, sink.last())
        -- and the files agree
        local again = job(MWS_COUNT)
        assert.is_true(again.restore(2))
        H.commit(again, 3, 3000, { "a", "b" })
        assert.same({ { "a", 3 }, { "b", 2 } }, sink.last())
    end)

    it("leaves the committed state as it was when a run fails", function()
        local desc = job([[
src:map(function(s) return s, 1 end)
   :map_with_state { fn = function(k, v, state)
       state:set((state:get() or 0) + 1)
       if k == "stop" then error("stop here") end
       return k, state:get()
   end }
   :foreach_batch(sink.collect)
]], "{ name = 't', on_error = 'fail' }")
        H.commit(desc, 1, 1000, { "a" })
        local ok, _, err, fatal = H.run_id(desc, 2, 2000, { "a", "stop" })
        assert.is_false(ok)
        assert.is_true(fatal)
        assert.matches("stop here", err)
        local pok, perr = desc.prepare(2)
        assert.is_false(pok)
        assert.matches("without a successful run", perr)
        desc.abort()
        H.commit(desc, 2, 2000, { "a" })
        assert.same({ { "a", 2 } }, sink.last())
    end)

    it("writes a delta per batch under <state_dir>/<version>/<op>/p0", function()
        local desc = job(MWS_COUNT)
        assert.equal(dir .. "/checkpoint/t/state", desc.state_dir)
        assert.is_true(desc.restore(0))
        local bytes = H.commit(desc, 1, 1000, { "a", "b" })
        assert.is_true(bytes > 0)
        H.commit(desc, 2, 2000, { "a" })
        assert.same({ "delta-1", "delta-2" }, ls(desc.state_dir .. "/v0/counts/p0"))
        assert.same({ "CURRENT", "v0" }, ls(desc.state_dir))
    end)

    it("writes no file for a batch that changed nothing", function()
        local desc = job(MWS_COUNT)
        H.commit(desc, 1, 1000, { "a" })
        local bytes = H.commit(desc, 2, 2000, {})
        assert.equal(0, bytes)
        assert.same({ "delta-1" }, ls(desc.state_dir .. "/v0/counts/p0"))
    end)

    it("compacts into a snapshot every snapshot_interval files and drops what it covers", function()
        local h = H.host(dir)
        h.snapshot_interval = 3
        local desc = job(MWS_COUNT, nil, nil, h)
        for b = 1, 7 do
            H.commit(desc, b, b * 1000, { "k" .. b, "a" })
        end
        assert.same({ "delta-7", "snapshot-6" }, ls(desc.state_dir .. "/v0/counts/p0"))
        local again = job(MWS_COUNT, nil, nil, h)
        assert.is_true(again.restore(7))
        H.commit(again, 8, 8000, { "a", "k1" })
        assert.same({ { "a", 8 }, { "k1", 2 } }, sink.last())
    end)

    it("spreads a snapshot over the commits after it; restore midway or after is exact", function()
        local h = H.host(dir)
        h.snapshot_interval = 2
        h.snapshot_min_slice = 1
        local desc = job(MWS_COUNT, nil, nil, h)
        local p0 = desc.state_dir .. "/v0/counts/p0"
        H.commit(desc, 1, 1000, { "a", "b", "c", "d" })
        H.commit(desc, 2, 2000, { "a" })          -- 2 deltas: snapshot-2 begins
        assert.same({ ".tmp-snapshot-2", "delta-1", "delta-2" }, ls(p0))
        H.commit(desc, 3, 3000, { "e", "a" })     -- a slice, and a key new meanwhile
        assert.same({ ".tmp-snapshot-2", "delta-1", "delta-2", "delta-3" }, ls(p0))
        -- restore midway: the older files still say everything
        local mid = job(MWS_COUNT, nil, nil, h)
        assert.is_true(mid.restore(3))
        H.commit(mid, 4, 4000, { "a", "e" })
        assert.same({ { "a", 4 }, { "e", 2 } }, sink.last())
        -- the first store goes on: its snapshot completes and the files it
        -- covers go; restore from snapshot + deltas
        desc = job(MWS_COUNT, nil, nil, h)
        assert.is_true(desc.restore(4))
        for b = 5, 9 do
            H.commit(desc, b, b * 1000, { "b" })
        end
        -- one complete snapshot, and only the deltas after it
        local snap, deltas = nil, {}
        for _, n in ipairs(ls(p0)) do
            local id = tonumber(n:match("^snapshot%-(%d+)$"))
            if id then
                assert.is_nil(snap, "a second snapshot " .. n)
                snap = id
            end
            deltas[#deltas + 1] = tonumber(n:match("^delta%-(%d+)$"))
        end
        assert.is_number(snap)
        for _, id in ipairs(deltas) do
            assert.is_true(id > snap, "delta-" .. id .. " is covered by snapshot-" .. snap)
        end
        local last = job(MWS_COUNT, nil, nil, h)
        assert.is_true(last.restore(9))
        H.commit(last, 10, 10000, { "a", "b", "c", "d", "e" })
        assert.same({ { "a", 5 }, { "b", 7 }, { "c", 2 }, { "d", 2 }, { "e", 3 } }, sink.last())
    end)

    it("restores the committed batch and deletes files of batches never committed", function()
        local desc = job(MWS_COUNT)
        H.commit(desc, 1, 1000, { "a" })
        H.commit(desc, 2, 2000, { "a" })
        assert.is_true((H.run_id(desc, 3, 3000, { "a" })))
        assert.is_true(desc.prepare(3))       -- then the process died before its checkpoint
        local p0 = desc.state_dir .. "/v0/counts/p0"
        assert.same({ "delta-1", "delta-2", "delta-3" }, ls(p0))
        local again = job(MWS_COUNT)
        assert.is_true(again.restore(2))
        assert.same({ "delta-1", "delta-2" }, ls(p0))
        H.commit(again, 3, 3000, { "a" })
        assert.same({ { "a", 3 } }, sink.last())
    end)

    it("starts empty from committed batch 0", function()
        local desc = job(MWS_COUNT)
        H.commit(desc, 1, 1000, { "a" })
        local again = job(MWS_COUNT)
        assert.is_true(again.restore(0))
        H.commit(again, 1, 1000, { "a" })
        assert.same({ { "a", 1 } }, sink.last())
    end)

    it("reports a damaged state file by name", function()
        local desc = job(MWS_COUNT)
        H.commit(desc, 1, 1000, { "a" })
        local path = desc.state_dir .. "/v0/counts/p0/delta-1"
        local s = H.read(path)
        H.write(path, s:sub(1, #s - 3))
        local again = job(MWS_COUNT)
        local ok, err = again.restore(1)
        assert.is_false(ok)
        assert.matches("delta%-1 is damaged", err)
    end)

    it("writes per commit bytes that follow the changed keys, not the state's size", function()
        local function delta_bytes(total, changed)
            local desc = job(MWS_COUNT, nil, "size" .. total)
            local all = {}
            for i = 1, total do all[i] = string.format("key-%06d", i) end
            H.commit(desc, 1, 1000, all)
            local some = {}
            for i = 1, changed do some[i] = all[i * 7 % total + 1] end
            local bytes = H.commit(desc, 2, 2000, some)
            H.rm_rf(desc.state_dir)
            return bytes
        end
        local small, big = delta_bytes(2000, 100), delta_bytes(20000, 100)
        assert.equal(small, big)
        local more = delta_bytes(20000, 1000)
        assert.is_true(more > 9 * big and more < 11 * big, big .. " vs " .. more)
    end)

    it("stays exact when small batches follow a backfill much larger than they are", function()
        local desc = job(MWS_COUNT, nil, "backfill")
        local all = {}
        for i = 1, 70000 do all[i] = string.format("key-%06d", i) end
        H.commit(desc, 1, 1000, all)            -- 70,000 keys staged at once
        local want = {}
        for b = 2, 4 do                         -- then a few keys a batch
            local some = {}
            for i = 1, 20 do
                local k = all[(b * 7919 + i * 97) % 70000 + 1]
                some[#some + 1] = k
                want[k] = (want[k] or 1) + 1
            end
            some[#some + 1] = "new-" .. b
            want["new-" .. b] = 1
            H.commit(desc, b, b * 1000, some)
            local got = {}
            for _, p in ipairs(sink.last()) do got[p[1]] = p[2] end
            for _, k in ipairs(some) do
                assert.equal(want[k], got[k], "batch " .. b .. ", key " .. k)
            end
        end
        -- the files give the same state
        local again = job(MWS_COUNT, nil, "backfill")
        assert.is_true(again.restore(4, nil))
        local keys = {}
        for k in pairs(want) do keys[#keys + 1] = k end
        H.commit(again, 5, 5000, keys)
        for _, p in ipairs(sink.last()) do
            assert.equal(want[p[1]] + 1, p[2], p[1])
        end
        assert.equal(#keys, #sink.last())
        H.rm_rf(desc.state_dir)
    end)

    it("archives a version folder CURRENT does not name and keeps CURRENT's state", function()
        local desc = job(MWS_COUNT, "{ name = 't', state_version = 1 }")
        H.commit(desc, 1, 1000, { "a" })
        -- as if a migration to 2 died after writing v2/ and before switching CURRENT
        assert(os.execute("cp -r '" .. desc.state_dir .. "/v1' '" .. desc.state_dir .. "/v2'"))
        local again = job(MWS_COUNT, "{ name = 't', state_version = 1 }")
        assert.is_true(again.restore(1, 1))
        local top, archived = ls(desc.state_dir), nil
        for _, n in ipairs(top) do
            if n:match("^archive%-") then archived = ls(desc.state_dir .. "/" .. n) end
        end
        assert.same({ "v2" }, archived)
        assert.equal(3, #top)                   -- CURRENT, v1, the archive
        H.commit(again, 2, 2000, { "a" })
        assert.same({ { "a", 2 } }, sink.last())
    end)

    it("hands info.batch_id to outputs, the same on a retry", function()
        local desc = job [[src:foreach_batch(function(r, info) sink.log[#sink.log + 1] = info.batch_id end)]]
        assert.is_false(desc.stateful)
        H.run_id(desc, 7, 1000, { "a" })
        H.run_id(desc, 7, 1000, { "a" })
        H.run_id(desc, 8, 2000, { "a" })
        assert.same({ 7, 7, 8 }, sink.log)
    end)
end)


describe("reload and state_version", function()
    it("keeps the state when state_version is unchanged", function()
        local desc = job(MWS_COUNT, "{ name = 't', state_version = 1 }")
        H.commit(desc, 1, 1000, { "a", "a" })
        local v2 = job(MWS_COUNT .. "\n-- edited", "{ name = 't', state_version = 1 }")
        assert.is_true(v2.check_migrate(1, 1))
        assert.is_true(v2.restore(1, 1))
        H.commit(v2, 2, 2000, { "a" })
        assert.same({ { "a", 3 } }, sink.last())
    end)

    it("migrates with the job's migrate when state_version changes", function()
        local desc = job(MWS_COUNT, "{ name = 't', state_version = 1 }")
        H.commit(desc, 1, 1000, { "a", "a", "b" })
        local opts = [[{ name = 't', state_version = 2, migrate = function(old, v)
            sink.log[#sink.log + 1] = v
            local new = {}
            for k, n in pairs(old.counts) do new[k] = n * 10 end
            return { counts = new }
        end }]]
        local v2 = job(MWS_COUNT, opts)
        assert.is_true(v2.check_migrate(1, 1))
        assert.is_true(v2.restore(1, 1))
        assert.same({ 1, 1 }, sink.log)
        H.commit(v2, 2, 2000, { "a" })
        assert.same({ { "a", 21 } }, sink.last())
        -- the migrated state is on disk: a crash now restores it, without migrating again
        local again = job(MWS_COUNT, opts)
        assert.is_true(again.restore(2, 1))
        assert.same({ 1, 1 }, sink.log)
        H.commit(again, 3, 3000, { "b" })
        assert.same({ { "b", 11 } }, sink.last())
        -- the old version's folder went to an archive
        local archived = false
        for _, n in ipairs(ls(desc.state_dir)) do
            if n:match("^archive%-") then
                archived = ls(desc.state_dir .. "/" .. n)[1] == "v1"
            end
        end
        assert.is_true(archived)
    end)

    it("returns a migrate's error with file:line and touches nothing", function()
        local desc = job(MWS_COUNT, "{ name = 't', state_version = 1 }")
        H.commit(desc, 1, 1000, { "a" })
        local v2 = job(MWS_COUNT, [[{ name = 't', state_version = 2, migrate = function(old)
            error("cannot convert")
        end }]], "job2")
        local ok, err = v2.check_migrate(1, 1)
        assert.is_false(ok)
        assert.matches("job2%.lua:%d+: cannot convert", err)
        H.commit(desc, 2, 2000, { "b" })
        ok, err = v2.restore(2, 1)
        assert.is_false(ok)
        assert.matches("job2%.lua:%d+: cannot convert", err)
        -- the old version still runs on its state
        assert.is_true(desc.restore(2, 1))
        H.commit(desc, 3, 3000, { "a" })
        assert.same({ { "a", 2 } }, sink.last())
    end)

    it("dry-runs migrate on the newest state on disk, past the committed id it is given", function()
        local desc = job(MWS_COUNT, "{ name = 't', state_version = 1 }")
        H.commit(desc, 1, 1000, { "a" })
        local v2 = job(MWS_COUNT, [[{ name = 't', state_version = 2, migrate = function(old)
            if old.counts.b then error("b cannot be converted") end
            return old
        end }]], "job2")
        assert.is_true(v2.check_migrate(1, 1))
        -- the running version commits batch 2 before the reload's swap
        H.commit(desc, 2, 2000, { "b" })
        local ok, err = v2.check_migrate(1, 1)
        assert.is_false(ok)
        assert.matches("b cannot be converted", err)
    end)

    it("rejects a migrate that returns state of an operator the job lacks, or a bad value", function()
        local desc = job(MWS_COUNT, "{ name = 't', state_version = 1 }")
        H.commit(desc, 1, 1000, { "a" })
        local v2 = job(MWS_COUNT, [[{ name = 't', state_version = 2,
            migrate = function(old) return { nope = {} } end }]])
        local ok, err = v2.restore(1, 1)
        assert.is_false(ok)
        assert.matches("operator 'nope', which the job does not declare %(it has: counts%)", err)
        local v3 = job(MWS_COUNT, [[{ name = 't', state_version = 2,
            migrate = function(old) return { counts = { a = print } } end }]])
        ok, err = v3.restore(1, 1)
        assert.is_false(ok)
        assert.matches("key \"a\" holds a function", err)
    end)

    it("archives the old state and starts empty without a migrate", function()
        local desc = job(MWS_COUNT, "{ name = 't', state_version = 1 }")
        H.commit(desc, 1, 1000, { "a" })
        local v2 = job(MWS_COUNT, "{ name = 't', state_version = 2 }")
        assert.is_true(v2.check_migrate(1, 1))
        assert.is_true(v2.restore(1, 1))
        H.commit(v2, 2, 2000, { "a" })
        assert.same({ { "a", 1 } }, sink.last())
        local found
        for _, n in ipairs(ls(desc.state_dir)) do
            if n:match("^archive%-") then
                found = ls(desc.state_dir .. "/" .. n .. "/v1/counts/p0")
            end
        end
        assert.same({ "delta-1" }, found)
    end)

    it("archives the state of an operator the new graph no longer has", function()
        local both = MWS_COUNT .. [[
src:map(function(s) return s, 1 end)
   :update_state_by_key(function(vs, n) return (n or 0) + #vs end, { name = "old_totals" })
   :foreach_batch(function() end)
]]
        local desc = job(both)
        H.commit(desc, 1, 1000, { "a" })
        local v2 = job(MWS_COUNT)
        assert.is_true(v2.restore(1))
        assert.same({ "counts" }, ls(desc.state_dir .. "/v0"))
        local found
        for _, n in ipairs(ls(desc.state_dir)) do
            if n:match("^archive%-") then
                found = ls(desc.state_dir .. "/" .. n)
            end
        end
        assert.same({ "old_totals" }, found)
        H.commit(v2, 2, 2000, { "a" })
        assert.same({ { "a", 2 } }, sink.last())
    end)
end)


describe("state checks", function()
    it("fails the batch fatally past state_max, naming the operator and its size", function()
        local desc = job(MWS_COUNT, "{ name = 't', state_max = 1000 }")
        assert.equal(1000, desc.state_max)
        local many = {}
        for i = 1, 200 do many[i] = "key" .. i end
        local ok, _, err, fatal = H.run_id(desc, 1, 1000, many)
        assert.is_false(ok)
        assert.is_true(fatal)
        assert.matches("over state.max %(1000 bytes%); map_with_state 'counts' %(.-job%.lua:%d+%) holds %d", err)
        assert.is_false((desc.prepare(1)))
    end)

    it("takes state.max from the host when the job sets none", function()
        local h = H.host(dir)
        h.state_max = "1k"
        local desc = job(MWS_COUNT, nil, nil, h)
        assert.equal(1024, desc.state_max)
    end)

    it("fails the batch naming operator, key and type of a bad state value", function()
        for _, case in ipairs {
            { "function() end", "holds a function" },
            { "require('ffi').new('int', 1)", "holds a cdata" },
            { "{ 1, { x = coroutine.create(print) } }", "holds a thread at %[2%]%[\"x\"%]" },
            { "setmetatable({}, {})", "holds a table with a metatable" },
        } do
            local desc = job([[
src:map(function(s) return s, 1 end)
   :map_with_state { name = "bad", fn = function(k, v, state) state:set(]] .. case[1] .. [[) end }
   :foreach_batch(sink.collect)
]], "{ name = 't', on_error = 'skip' }")
            local ok, _, err, fatal = H.run_id(desc, 1, 1000, { "k1" })
            assert.is_false(ok)
            assert.is_true(fatal)
            assert.matches("map_with_state 'bad' %(.-%): the state of key \"k1\" " .. case[2], err)
        end
    end)

    it("fails the batch on a bad state value from update_state_by_key and on a bad key", function()
        local desc = job [[
src:map(function(s) return s, 1 end)
   :update_state_by_key(function(vs, n) return print end)
   :foreach_batch(sink.collect)
]]
        local ok, _, err, fatal = H.run_id(desc, 1, 1000, { "a" })
        assert.is_false(ok)
        assert.is_true(fatal)
        assert.matches("update_state_by_key 'update_state_by_key#1' .-key \"a\" holds a function", err)

        desc = job [[
src:map(function(s) return {}, 1 end)
   :map_with_state { fn = function(k, v, state) state:set(1) end }
   :foreach_batch(sink.collect)
]]
        ok, _, err, fatal = H.run_id(desc, 1, 1000, { "a" })
        assert.is_false(ok)
        assert.is_true(fatal)
        assert.matches("key of type table", err)
    end)

    it("checks the declarations at the script's line", function()
        local cases = {
            { [[src:map(function(s) return s, 1 end):map_with_state { fn = 1 }]],
              "job%.lua:5: bad option 'fn' to 'map_with_state'" },
            { [[src:map(function(s) return s, 1 end):map_with_state { fn = print, timeout = "soon" }]],
              "job%.lua:5: bad option 'timeout'" },
            { [[src:map_with_state { fn = print }]],
              "job%.lua:5: 'map_with_state' needs a stream of %(key, value%) pairs" },
            { [[src:map(function(s) return s, 1 end):state_snapshots()]],
              "job%.lua:5: 'state_snapshots' is a method of the stream map_with_state returns" },
            { [[local p = src:map(function(s) return s, 1 end)
p:update_state_by_key(print, { name = "x" })
p:map_with_state { fn = print, name = "x" }]],
              "job%.lua:7: .-already has a stateful operator named 'x', at .-job%.lua:6" },
            { [[src:map(function(s) return s, 1 end):update_state_by_key(print, { name = "a/b" })]],
              "job%.lua:5: bad option 'name' to 'update_state_by_key'" },
        }
        for _, c in ipairs(cases) do
            local desc, err = H.load(dir, HEAD .. "local job = ember.job { name = 't' }\n"
                                     .. "local src = job:generator {}\n"
                                     .. c[1] .. ":foreach_batch(print)\nreturn job\n")
            assert.is_nil(desc)
            assert.matches(c[2], err)
        end
        local desc, err = H.load(dir, HEAD .. "return ember.job { state_max = 'lots' }\n")
        assert.is_nil(desc)
        assert.matches("bad option 'state_max'", err)
    end)
end)


-- The calls the driver makes around every batch, in its order
-- (docs/internals.md): what core/luahost.c relies on.
describe("the driver's contract", function()
    it("runs load, restore, run_batch, prepare, checkpoint, apply; abort; and restore after a crash", function()
        local h = H.host(dir)
        h.state_dir = dir .. "/cp/t/state"
        h.state_max = 1048576
        h.snapshot_interval = 2
        local desc = job(MWS_COUNT, nil, nil, h)
        assert.is_true(desc.stateful)
        assert.equal(h.state_dir, desc.state_dir)
        assert.equal(1048576, desc.state_max)
        assert.same({ true }, { desc.check_migrate(0, nil) })
        assert.same({ true }, { desc.restore(0, nil) })

        -- batch 1 commits
        local ok, failed, err, fatal = H.run_id(desc, 1, 1000, { "a", "b" })
        assert.same({ true, 0, nil, false }, { ok, failed, err, fatal })
        local pok, perr, bytes = desc.prepare(1)
        assert.is_true(pok)
        assert.is_nil(perr)
        assert.is_true(bytes > 0)
        assert.is_true(desc.apply(1))
        assert.same({ counts = 24 }, desc.state_bytes())

        -- batch 2 fails once (its checkpoint could not be written), then commits
        assert.is_true((H.run_id(desc, 2, 2000, { "a" })))
        assert.is_true((desc.prepare(2)))
        assert.is_true(desc.abort())
        assert.is_true((H.run_id(desc, 2, 2000, { "a" })))
        assert.is_true((desc.prepare(2)))
        assert.is_true(desc.apply(2, true))     -- the driver's: maintain comes after the acks
        assert.same({ { "a", 2 } }, sink.last())
        -- two deltas: maintain, outside the commit, merges batch 2 and writes
        -- the snapshot of batch 2
        assert.same({ "delta-1", "delta-2" }, ls(h.state_dir .. "/v0/counts/p0"))
        local mok, merr, mbytes = desc.maintain()
        assert.is_true(mok, merr)
        assert.is_true(mbytes > 0)
        -- complete (two keys make one slice): it covers the deltas up to 2
        assert.same({ "snapshot-2" }, ls(h.state_dir .. "/v0/counts/p0"))
        assert.same({ true, nil, 0 }, { desc.maintain() })   -- nothing left to write

        -- batch 3 is prepared, then kill -9 before the checkpoint: the driver
        -- restores from committed batch 2 and runs batch 3 again
        assert.is_true((H.run_id(desc, 3, 3000, { "a", "b" })))
        local _, _, b3 = desc.prepare(3)
        assert.is_true(b3 > 0)
        assert.same({ "delta-3", "snapshot-2" }, ls(h.state_dir .. "/v0/counts/p0"))
        local after = job(MWS_COUNT, nil, nil, h)
        assert.is_true(after.restore(2, nil))
        assert.same({ counts = 24 }, after.state_bytes())
        assert.is_true((H.run_id(after, 3, 3000, { "a", "b" })))
        assert.same({ { "a", 3 }, { "b", 2 } }, sink.last())
        assert.is_true((after.prepare(3)))
        assert.is_true(after.apply(3, true))
        assert.is_true((after.maintain()))
        assert.same({ "delta-3", "snapshot-2" }, ls(h.state_dir .. "/v0/counts/p0"))
    end)

    it("leaves a job without state off the disk", function()
        local desc = job [[src:foreach_batch(sink.collect)]]
        assert.is_false(desc.stateful)
        assert.is_true(desc.restore(5, nil))
        assert.is_true((H.run_id(desc, 6, 1000, { "a" })))
        assert.same({ true, nil, 0 }, { desc.prepare(6) })
        assert.is_true(desc.apply(6))
        assert.is_false(files.exists(desc.state_dir))
        assert.same({}, desc.state_bytes())
    end)
end)
