-- Keyed state figures, through desc.run_batch / prepare / apply / restore
-- exactly as the driver calls them (FFI batch views, real files):
--
--   luajit bench/state_bench.lua [throughput|commit|all] [seconds]
--
-- throughput  map_with_state counting 100-byte records over 100,000 keys,
--             one worker: records/s for the run alone and with each
--             batch's commit (prepare + apply, fsync'd files); the records
--             as strings (format = "value") and as views of their bytes
--             (format = "bytes": the same job, no string per record)
-- commit      1,000,000 keys of state (16-byte string keys, number
--             values), 10,000 changed per batch: commit time (prepare +
--             apply: the delta, as the driver times it; median, p90, max) and
--             bytes per commit, the snapshot slice written after each commit,
--             restore time, RSS per key
--
-- Targets (issue: keyed state): 3,000,000 records/s; commit <= 20 ms with
-- bytes proportional to the changed keys; restore <= 2 s; <= 100 B/key.

package.path = "lua/?.lua;lua/?/init.lua;" .. package.path

local runtime = require "ember.runtime"
local view = require "spec.unit.support.view"
local ffi = require "ffi"

local what = arg[1] or "all"
local seconds = tonumber(arg[2]) or 3

ffi.cdef [[
    struct bench_timespec { long tv_sec; long tv_nsec; };
    int clock_gettime(int clk, struct bench_timespec *ts);
]]
local ts = ffi.new("struct bench_timespec")
local function now()
    ffi.C.clock_gettime(1, ts)                  -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local function rss_kb()
    for line in io.lines("/proc/self/status") do
        local kb = line:match("^VmRSS:%s+(%d+)")
        if kb then return tonumber(kb) end
    end
end

local function tmpdir()
    local d = os.tmpname()
    os.remove(d)
    os.execute("mkdir -p " .. d)
    return d
end

local function load(dir, src, host)
    local path = dir .. "/bench.lua"
    local f = assert(io.open(path, "w"))
    f:write(src)
    f:close()
    host = host or {}
    host.checkpoint_dir = dir
    host.log = function(level, job, msg) print(level, msg) end
    return assert(runtime.load(path, host))
end


local function throughput(format)
    local KEYS, BLOCK, PER_BATCH = 100000, 10000, 500000
    local blocks = {}
    local n = 0
    for b = 1, PER_BATCH / BLOCK do
        local recs = { source = 1 }
        for i = 1, BLOCK do
            n = n + 1
            local head = string.format("key-%06d ", (n * 7919) % KEYS)
            recs[i] = head .. string.rep("x", 100 - #head)
        end
        blocks[b] = recs
    end
    assert(#blocks[1][1] == 100)
    local dir = tmpdir()
    local result = {}
    package.loaded.bench_result = result
    local desc = load(dir, [[
local ember = require "ember"
local result = require "bench_result"
local job = ember.job { name = "bench" }
job:generator { rate = 0, format = "]] .. format .. [[" }
  :map(function(s) return s:sub(1, 10), 1 end)
  :map_with_state { name = "counts", fn = function(key, value, state)
      state:set((state:get() or 0) + value)
  end }
  :count()
  :foreach_batch(function(records) result.count = records[1] end)
return job
]])
    assert(desc.restore(0))
    local v = view.batch(1700000000000, unpack(blocks))
    -- The records live in the view's blocks, as in the driver; the Lua
    -- strings they were built from would otherwise stay in the string
    -- table (600,000 of them), which ember's Lua state never holds.
    blocks = nil
    collectgarbage()
    collectgarbage()
    local id = 0
    local function batch(commit)
        id = id + 1
        local ok, failed, err = desc.run_batch(v.ptr, id)
        assert(ok and failed == 0, err)
        if commit then
            assert(desc.prepare(id))
            assert(desc.apply(id))
        else
            desc.abort()
        end
    end
    for _ = 1, 3 do batch(true) end                 -- JIT warm-up, all keys exist
    -- The machine may be shared: time each batch on the process's CPU
    -- clock and report the median batch.
    for _, commit in ipairs { false, true } do
        local t0 = now()
        local per = {}
        repeat
            local c0 = os.clock()
            batch(commit)
            per[#per + 1] = os.clock() - c0
        until now() - t0 >= seconds
        table.sort(per)
        local med = per[math.ceil(#per / 2)]
        print(string.format("map_with_state count, %d keys, format = %s, %s: %.0f records/s "
                            .. "(median of %d batches of %d records; best %.0f)",
                            KEYS, format, commit and "run + commit (prepare, fsync, apply)"
                            or "run only", PER_BATCH / med, #per, PER_BATCH, PER_BATCH / per[1]))
    end
    os.execute("rm -rf " .. dir)
end


local function commit()
    local KEYS, CHANGED = 1000000, 10000
    local dir = tmpdir()
    local src = [[
local ember = require "ember"
local job = ember.job { name = "big" }
job:generator { rate = 0 }
  :map(function(s) return s, 1 end)
  :map_with_state { name = "counts", fn = function(key, value, state)
      state:set((state:get() or 0) + value)
  end }
  :foreach_batch(function() end)
return job
]]
    collectgarbage()
    local rss0, gc0 = rss_kb(), collectgarbage("count")
    local desc = load(dir, src, { snapshot_interval = 10 })
    assert(desc.restore(0))
    -- 16-byte keys, filled in batches of 100,000
    local function key(i) return string.format("device-%09d", i) end
    assert(#key(1) == 16)
    local id = 0
    local FILL = 100000
    for b = 0, KEYS / FILL - 1 do
        local recs = { source = 1 }
        for i = 1, FILL do recs[i] = key(b * FILL + i) end
        id = id + 1
        local v = view.batch(id * 1000, recs)
        assert(desc.run_batch(v.ptr, id))
        assert(desc.prepare(id))
        assert(desc.apply(id))
    end
    collectgarbage()
    collectgarbage()
    local rss1, gc1 = rss_kb(), collectgarbage("count")
    print(string.format("RSS with %d keys of state (16-byte keys, numbers): %.1f bytes/key "
                        .. "(%.1f MiB over the empty job; the Lua heap grew %.1f bytes/key)",
                        KEYS, (rss1 - rss0) * 1024 / KEYS, (rss1 - rss0) / 1024,
                        (gc1 - gc0) * 1024 / KEYS))

    -- 10,000 changed keys per batch: a delta per commit, and the snapshot
    -- of every 10th batch spread over the commits after it
    local times, bytes, cpus, mtimes, mbytes = {}, {}, {}, {}, 0
    for b = 1, 30 do
        local recs = { source = 1 }
        for i = 1, CHANGED do recs[i] = key(((b * 7919 + i * 97) % KEYS) + 1) end
        id = id + 1
        local v = view.batch(id * 1000, recs)
        local t0 = now()
        assert(desc.run_batch(v.ptr, id))
        local t1 = now()
        local c1 = os.clock()
        local ok, err, n = desc.prepare(id)
        assert(ok, err)
        local tp = now()
        assert(desc.apply(id, true))            -- as the driver: the slice comes after
        local t2 = now()
        cpus[#cpus + 1] = (os.clock() - c1) * 1000
        local mok, merr, m = desc.maintain()
        assert(mok, merr)
        local t3 = now()
        if os.getenv("BENCH_VERBOSE") then
            print(string.format("  batch %d: run %.1f ms, prepare %.1f ms, apply %.1f ms, %d bytes; "
                                .. "snapshot slice %.1f ms, %d bytes", id, (t1 - t0) * 1000,
                                (tp - t1) * 1000, (t2 - tp) * 1000, n, (t3 - t2) * 1000, m))
        end
        times[#times + 1] = (t2 - t1) * 1000
        bytes[#bytes + 1] = n
        mtimes[#mtimes + 1] = (t3 - t2) * 1000
        mbytes = mbytes + m
    end
    local sorted = {}
    for i, t in ipairs(times) do sorted[i] = t end
    table.sort(sorted)
    table.sort(cpus)
    local sum, min = 0, math.huge
    for _, b in ipairs(bytes) do
        sum = sum + b
        min = math.min(min, b)
    end
    print(string.format("commit of %d changed keys with %d keys of state (prepare + apply, fsync'd): "
                        .. "median %.1f ms, p90 %.1f ms, max %.1f ms over %d commits", CHANGED, KEYS,
                        sorted[math.ceil(#sorted / 2)], sorted[math.ceil(#sorted * 0.9)],
                        sorted[#sorted], #sorted))
    print(string.format("  the same in CPU time (what a shared machine's load does not inflate as "
                        .. "much): median %.1f ms, max %.1f ms", cpus[math.ceil(#cpus / 2)],
                        cpus[#cpus]))
    print(string.format("bytes per commit: %.0f on average, %d at least (%.1f bytes per changed "
                        .. "key)", sum / #bytes, min, min / CHANGED))
    table.sort(mtimes)
    print(string.format("snapshot slices, after each commit (outside it): median %.1f ms, max %.1f ms, "
                        .. "%.0f bytes per batch on average", mtimes[math.ceil(#mtimes / 2)],
                        mtimes[#mtimes], mbytes / #mtimes))

    -- restore after a kill -9: a fresh load rebuilding from the files
    desc = nil
    collectgarbage()
    local again = load(dir, src, { snapshot_interval = 10 })
    local t0 = now()
    local ok, err = again.restore(id)
    assert(ok, err)
    print(string.format("restore of %d keys (snapshot + deltas): %.2f s", KEYS, now() - t0))
    os.execute("rm -rf " .. dir)
end


if what == "throughput" or what == "all" then
    throughput("value")
    throughput("bytes")
end
if what == "commit" or what == "all" then commit() end
