-- Window figures, through desc.run_batch / prepare / apply exactly as the
-- driver calls them (FFI batch views, real fsync'd state files):
--
--   luajit bench/window_bench.lua [batches]
--
-- reduce_by_key_and_window over 100,000 keys, 60 s windows sliding by
-- 1 s, one batch a second. For several rates (records per batch), once the
-- window is full: the time of a batch (run + commit) of the inverse form
-- and of the plain form, with the records entering and leaving per batch
-- and the records in the window. Two shapes of output:
--   update  the window emitted once a minute (slide 60 s): the batches in
--           between only update it, which is what the inverse form makes
--           incremental
--   emit    the window emitted every batch (slide 1 s) to an output that
--           counts it: emitting costs the keys in the window, whatever the
--           form
-- Target (issue: windows): per-batch cost proportional to the records
-- entering and leaving, not to the window's size.

package.path = "lua/?.lua;lua/?/init.lua;" .. package.path

local runtime = require "ember.runtime"
local view = require "spec.unit.support.view"
local ffi = require "ffi"

local measured = tonumber(arg[1]) or 8
local KEYS, LENGTH = 100000, 60

ffi.cdef [[
    struct wbench_timespec { long tv_sec; long tv_nsec; };
    int clock_gettime(int clk, struct wbench_timespec *ts);
]]
local ts = ffi.new("struct wbench_timespec")
local function now()
    ffi.C.clock_gettime(1, ts)
    return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local function tmpdir()
    local d = os.tmpname()
    os.remove(d)
    os.execute("mkdir -p " .. d)
    return d
end

local function load(dir, src)
    local path = dir .. "/wbench.lua"
    local f = assert(io.open(path, "w"))
    f:write(src)
    f:close()
    local host = { checkpoint_dir = dir, batch_interval_ms = 1000, state_max = 0,
                   log = function(level, job, msg) print(level, msg) end }
    return assert(runtime.load(path, host))
end

local function job(inverse, length, slide)
    return [[
local ember = require "ember"
local result = require "wbench_result"
local job = ember.job { name = "wbench", batch_interval = "1s", state_max = 0 }
job:generator {}
  :map(function(s) return s, 1 end)
  :reduce_by_key_and_window(function(a, b) return a + b end, ]]
        .. (inverse and "function(a, b) return a - b end, " or "")
        .. '"' .. length .. 's", "' .. slide .. [[s")
  :foreach_batch(function(r) result.emitted = #r end)
return job
]]
end

-- The records of batch b: `rate` keys from a window of the 100,000 that
-- moves with b, so keys enter and leave the window.
local function batch_records(b, rate)
    local recs = { source = 1 }
    for i = 1, rate do
        recs[i] = string.format("key-%06d", (b * 7919 + i * 13) % KEYS)
    end
    return recs
end

local function median(t)
    table.sort(t)
    return t[math.floor((#t + 1) / 2)]
end

-- Fills the window, then times n batches. Returns the median run time
-- (ms) of the batches that emitted (emit = true) or of those that did not,
-- the keys the last emission gave, and the median commit time (prepare +
-- apply: the state files, fsync'd).
local function run(inverse, length, slide, rate, n, emit)
    local dir = tmpdir()
    local result = {}
    package.loaded.wbench_result = result
    local desc = load(dir, job(inverse, length, slide))
    assert(desc.restore(0))
    local times, commits, emitted = {}, {}, 0
    local t0 = 3600000                          -- a multiple of every slide
    local b = 0
    while #times < n do
        b = b + 1
        local recs = batch_records(b, rate)
        local v = view.batch(t0 + b * 1000, recs)
        local start = now()
        local ok, failed, err = desc.run_batch(v.ptr, b)
        assert(ok and failed == 0, err)
        local mid = now()
        assert(desc.prepare(b))
        assert(desc.apply(b))
        local dt, dc = (mid - start) * 1000, (now() - mid) * 1000
        v.keep = v.keep
        local emits = ((t0 + b * 1000) % (slide * 1000)) == 0
        if b > length and emits == emit then
            times[#times + 1] = dt
            commits[#commits + 1] = dc
            emitted = result.emitted or emitted
        end
        result.emitted = nil
        if b % 8 == 0 then collectgarbage() end
    end
    os.execute("rm -rf " .. dir)
    return median(times), emitted, median(commits)
end

local fewer = math.max(3, math.floor(measured / 3))
print(string.format("reduce_by_key_and_window over %d keys, one batch a second; median over "
                    .. "%d batches once the window is full, ms", KEYS, measured))
print("")
print("60 s windows: records per batch (entering = leaving) against the window's size")
print(string.format("%10s %12s %11s | %10s %10s | %12s %11s | %9s", "records/b", "enter+leave",
                    "in window", "inv update", "its commit", "inverse emit", "plain emit",
                    "keys out"))
for _, rate in ipairs { 2000, 10000, 40000 } do
    local upd, _, commit = run(true, 60, 60, rate, measured, false)
    local emit, keys = run(true, 60, 1, rate, measured, true)
    local plain = run(false, 60, 1, rate, fewer, true)
    print(string.format("%10d %12d %11d | %10.1f %10.1f | %12.1f %11.1f | %9d", rate, 2 * rate,
                        60 * rate, upd, commit, emit, plain, keys))
    io.stdout:flush()
end
print("")
print("10,000 records per batch: the window's length against the cost")
print(string.format("%10s %11s | %10s %10s | %12s %11s", "length", "in window", "inv update",
                    "its commit", "inverse emit", "plain emit"))
for _, length in ipairs { 10, 30, 60 } do
    local upd, _, commit = run(true, length, length, 10000, measured, false)
    local emit = run(true, length, 1, 10000, measured, true)
    local plain = run(false, length, 1, 10000, fewer, true)
    print(string.format("%9ds %11d | %10.1f %10.1f | %12.1f %11.1f", length, length * 10000, upd,
                        commit, emit, plain))
    io.stdout:flush()
end
print("")
print("inv update: the run of a batch that only updates the window (slide = length); its commit:")
print("the state files it writes (fsync'd). inverse/plain emit: the run of a batch that also emits")
print("every key of the window to an output (slide 1 s).")
