-- Executor throughput: generator -> map -> filter -> reduce_by_key -> count
-- on 100-byte records with about 1000 distinct keys, run through
-- desc.run_batch exactly as the driver does (FFI batch views).
--
--   luajit bench/executor_bench.lua [seconds] [records_per_batch]
--
-- Prints records/s. The target is 2,000,000 records/s on one core.

package.path = "lua/?.lua;lua/?/init.lua;" .. package.path

local runtime = require "ember.runtime"
local view = require "spec.unit.support.view"

local seconds = tonumber(arg[1]) or 3
local per_batch = tonumber(arg[2]) or 100000
local BLOCK = 10000                     -- records per block (200 ms blocks at 50k/s)
local KEYS = 1000


local function record(i)
    local head = string.format("key-%03d ", i % KEYS)
    return head .. string.rep("x", 100 - #head)
end

local blocks = {}
for b = 1, math.ceil(per_batch / BLOCK) do
    local recs = { source = 1 }
    for i = 1, BLOCK do
        recs[i] = record((b - 1) * BLOCK + i)
    end
    blocks[b] = recs
end
assert(#blocks[1][1] == 100)

local dir = os.tmpname()
os.remove(dir)
os.execute("mkdir -p " .. dir)
local path = dir .. "/bench.lua"
local f = assert(io.open(path, "w"))
f:write([[
local ember = require "ember"
local result = require "bench_result"
local job = ember.job { name = "bench" }
job:generator { rate = 0 }
  :map(function(s) return s:match("^(%S+)"), 1 end)
  :filter(function(k, v) return k ~= "key-999" end)
  :reduce_by_key(function(a, b) return a + b end)
  :count()
  :foreach_batch(function(records) result.count = records[1] end)
return job
]])
f:close()

local result = {}
package.loaded.bench_result = result

local logs = {}
local desc = assert(runtime.load(path, {
    checkpoint_dir = dir,
    log = function(level, job, msg) logs[#logs + 1] = msg end,
}))

local v = view.batch(1700000000000, unpack(blocks))
local nrec = #blocks * BLOCK

-- warm up (JIT traces), then measure
for _ = 1, 5 do
    assert(desc.run_batch(v.ptr))
end
assert(result.count == KEYS - 1, "wrong result: " .. tostring(result.count))

local clock = os.clock
local t0 = clock()
local batches = 0
repeat
    local ok, failed, err = desc.run_batch(v.ptr)
    assert(ok and failed == 0, err)
    batches = batches + 1
until clock() - t0 >= seconds
local dt = clock() - t0

local total = batches * nrec
print(string.format("%d batches of %d records (%d-byte records, %d keys) in %.2f s CPU",
                    batches, nrec, 100, KEYS, dt))
print(string.format("%.0f records/s", total / dt))
assert(#logs == 0, logs[1])
os.execute("rm -rf " .. dir)
