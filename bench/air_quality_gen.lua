-- The air-quality workload of bench/air_quality.sh: N readings, one JSON
-- object of exactly 48 bytes per line (49 with the newline), the same
-- bytes on every run (LuaJIT's math.random with a fixed seed).
--
--   luajit bench/air_quality_gen.lua N > readings.jsonl
--
-- About 5% of the readings have a negative PM2.5 (a faulty sensor); the
-- filter job drops them. Prints to stderr "kept K" (readings with
-- pm25 >= 0) and "level <name> <count>" per level the job adds, so the
-- bench can check every count.
local n = tonumber(arg[1]) or 10000000
local format = string.format
local concat = table.concat

-- LuaJIT's generator (Tausworthe, period 2^223). The linear congruential
-- one this file had repeated its lines every 11,654 readings, so most
-- record strings were already interned: a file of real readings is not.
local random = math.random
math.randomseed(12345)
local function rand(m)              -- 0 .. m-1
    return random(0, m - 1)
end

local LEVELS = { "good", "moderate", "unhealthy" }
local function level(pm25)
    if pm25 < 12 then return 1 elseif pm25 < 35.5 then return 2 end
    return 3
end

local out, m, kept, per = {}, 0, 0, { 0, 0, 0 }
for _ = 1, n do
    local dev = rand(1000)
    local pm25
    if rand(20) == 0 then
        pm25 = -(1 + rand(89)) / 10           -- -0.1 .. -8.9: "-x.x", 4 bytes
    else
        pm25 = (100 + rand(900)) / 10         -- 10.0 .. 99.9: 4 bytes
    end
    local line = format('{"dev":"aq-%03d","pm25":%.1f,"co2":%d,"t":%.1f}',
                        dev, pm25, 1000 + rand(1000), (100 + rand(300)) / 10)
    if pm25 >= 0 then
        kept = kept + 1
        local l = level(pm25)
        per[l] = per[l] + 1
    end
    m = m + 1
    out[m] = line
    if m == 8192 then
        io.write(concat(out, "\n", 1, m), "\n")
        m = 0
    end
end
if m > 0 then io.write(concat(out, "\n", 1, m), "\n") end
io.stderr:write(format("kept %d\n", kept))
for i = 1, 3 do io.stderr:write(format("level %s %d\n", LEVELS[i], per[i])) end
