-- support.isolation: a healthy job to run beside an attack, and what the
-- specs of spec/isolation measure about it.
--
--   local iso = require "support.isolation"
--   iso.write_healthy(d)                -- jobs/healthy.lua
--   ... the attack ...
--   local delays = iso.delays(d, "healthy")   -- total delay (ms) of each batch
--   assert.is_true(iso.p95(delays) < iso.INTERVAL_MS)
--   iso.assert_contiguous(d)            -- every number 1..n seen once, in order
--
-- The healthy job reads a sequence (1, 2, 3, ...) at 50 records/s with a
-- 500 ms batch interval and appends every number it sees to healthy.seen,
-- so a spec can tell a job that kept up from one that merely ran.

local driver = require "support.driver"

local tonumber = tonumber
local ipairs = ipairs
local table_sort = table.sort
local math_ceil = math.ceil

local _M = {}

_M.INTERVAL_MS = 500

local HEALTHY = [[
local ember = require "ember"
local job = ember.job { name = "healthy", batch_interval = "500ms" }
job:generator { kind = "sequence", rate = 50 }
   :foreach_batch(function(records, info)
       local f = assert(io.open({{seen}}, "a"))
       for _, n in ipairs(records) do f:write(n, "\n") end
       f:close()
   end)
return job
]]

-- The configuration the isolation specs run with: 100 ms blocks, the
-- default two workers.
function _M.conf(extra)
    local c = {
        ["streaming.blockInterval"] = "100ms",
        ["streaming.concurrentJobs"] = "2",
    }
    for k, v in pairs(extra or {}) do
        c[k] = v or nil
    end
    return c
end

function _M.write_healthy(d)
    d:write_job("healthy.lua", driver.render(HEALTHY, { seen = driver.quote(d:path("healthy.seen")) }))
end

-- Total delay (batch time to end of processing, ms) of every batch of job
-- the debug log reports, from the log mark `from` on.
function _M.delays(d, job, from)
    local out = {}
    for _, line in ipairs(d:log_lines("[" .. job .. "] batch ", { plain = true, from = from })) do
        local ms = line:match("total delay (%d+) ms")
        if ms then
            out[#out + 1] = tonumber(ms)
        end
    end
    return out
end

function _M.p95(values)
    local s = {}
    for i, v in ipairs(values) do
        s[i] = v
    end
    table_sort(s)
    return s[math_ceil(#s * 0.95)] or 0
end

-- The healthy job's numbers: 1..n, each once, in order. Returns n.
function _M.assert_contiguous(d)
    local seen = d:file_lines("healthy.seen")
    for i, v in ipairs(seen) do
        if tonumber(v) ~= i then
            error("healthy.seen: line " .. i .. " is " .. v .. ", expected " .. i, 2)
        end
    end
    return #seen
end

-- Waits until the healthy job has run `count` more batches after `from`
-- (a log mark) and returns their delays.
function _M.wait_healthy_batches(d, count, from, timeout)
    local delays
    d:wait_until(function()
        delays = _M.delays(d, "healthy", from)
        return #delays >= count, #delays .. " healthy batches"
    end, timeout or 60, 0.1, count .. " batches of the healthy job")
    return delays
end

return _M
