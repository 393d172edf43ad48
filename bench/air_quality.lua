-- The air-quality filter job of bench/air_quality.sh: drop the readings
-- with a negative PM2.5, add a "level" to the others. Default settings
-- (batch interval, memory.max) unless the bench passes --conf flags.
--
--   AQ_SOURCE  file (AQ_DIR, the folder of readings) or socket (AQ_PORT)
--   AQ_OUTPUT  discard: each batch's count, one line "count N" on stdout
--              file: save_as_text_files(AQ_OUT .. "/aq", "jsonl")
--   AQ_FORMAT  value (string.find on the line, the default), bytes (the
--              same scan on a view of the line: format = "bytes") or json
--              (format = "json" and string building on the table)
local ember = require "ember"

local tonumber, find, sub = tonumber, string.find, string.sub
local getenv = os.getenv
local io_write, io_flush = io.write, io.flush

local job = ember.job { name = "air_quality_bench" }

local source = getenv("AQ_SOURCE") or "file"
local format = getenv("AQ_FORMAT") or "value"
local readings
if source == "socket" then
    readings = job:socket { host = "127.0.0.1", port = tonumber(getenv("AQ_PORT")),
                            format = format ~= "value" and format or nil }
else
    readings = job:file { path = getenv("AQ_DIR"), pattern = "*.jsonl",
                          format = format ~= "value" and format or nil }
end

local function level(p)
    if p < 12 then return "good" elseif p < 35.5 then return "moderate" end
    return "unhealthy"
end

local leveled
if format == "json" then
    leveled = readings:map(function(r)
        local p = r.pm25
        if type(p) ~= "number" or p < 0 then return nil end
        return '{"dev":"' .. r.dev .. '","pm25":' .. p .. ',"co2":' .. r.co2
               .. ',"t":' .. r.t .. ',"level":"' .. level(p) .. '"}'
    end)
elseif format == "bytes" then
    -- the same scan on a view of the line: no string of the line is made,
    -- the number is read from the bytes, and the output is built in one
    -- string (v:view(1, -2) is a view of all but the last byte)
    leveled = readings:map(function(v)
        local at = v:find('"pm25":', 1, true)
        if not at then return nil end
        local stop = v:find(",", at + 7, true)
        local p = v:tonumber(at + 7, (stop or #v) - 1)
        if not p or p < 0 then return nil end        -- dropped
        return v:view(1, -2) .. ',"level":"' .. level(p) .. '"}'
    end)
else
    leveled = readings:map(function(line)
        -- a hand-written scan: plain find and sub compile (string.match
        -- with a pattern does not, in LuaJIT)
        local at = find(line, '"pm25":', 1, true)
        if not at then return nil end
        local stop = find(line, ",", at + 7, true)
        local p = tonumber(sub(line, at + 7, (stop or #line) - 1))
        if not p or p < 0 then return nil end        -- dropped
        return sub(line, 1, -2) .. ',"level":"' .. level(p) .. '"}'
    end)
end

if getenv("AQ_OUTPUT") == "file" then
    leveled:save_as_text_files(getenv("AQ_OUT") .. "/aq", "jsonl")
else
    leveled:count():foreach_record(function(n)
        io_write("count ", n, "\n")
        io_flush()
    end)
end

return job
