-- Checks what a YSB job wrote to Redis against what bench/ysb/gen.lua sent.
--
--   luajit bench/ysb/check.lua expected.txt "redis-cli -p PORT" [FROM_MS TO_MS]
--
-- Reads the layout jobs/ysb.lua writes (and bench/ysb/handwritten.lua):
-- per campaign (the "campaigns" set) the set windows:<campaign> of window
-- starts, the campaign's hash mapping each start to a window id, and per
-- window id the hash with seen_count and time_updated. Every (campaign,
-- window) count must equal the views sent, and no other window may exist.
--
-- Latency is the benchmark's: time_updated (the last write of the window)
-- minus the window's end, over the windows wholly inside [FROM_MS, TO_MS]
-- (the paced run: its first and last windows are partial). Prints
--
--   exact: yes (W windows, V views)        or   exact: NO (...)
--   latency: p50 X ms, p99 Y ms, max Z ms over K windows
--
-- and exits 1 when not exact.
local expected_path, cli, from_ms, to_ms = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4])
local WINDOW = 10000
local floor, format = math.floor, string.format

local want, campaigns, nviews = {}, {}, 0
for line in io.lines(expected_path) do
    local c, start, n = line:match("^(%S+) (%d+) (%d+)$")
    if c then
        want[c .. " " .. start] = tonumber(n)
    else
        local v = line:match("^views (%d+)$")
        if v then nviews = tonumber(v) end
    end
end

-- Runs commands through redis-cli --csv: one line per reply.
local function run(cmds)
    local tmp = os.tmpname()
    local f = assert(io.open(tmp, "w"))
    f:write(table.concat(cmds, "\n"), "\n")
    f:close()
    local p = assert(io.popen(cli .. " --csv < " .. tmp))
    local out = {}
    for line in p:lines() do out[#out + 1] = line end
    p:close()
    os.remove(tmp)
    assert(#out == #cmds, format("redis-cli gave %d replies to %d commands", #out, #cmds))
    return out
end

local function fields(line)           -- "a","b" -> { "a", "b" } (ids hold no quotes)
    local t = {}
    for q in line:gmatch('"([^"]*)"') do t[#t + 1] = q end
    return t
end

local function values(line)          -- "a",NULL,"b" -> { "a", false, "b" }
    local t = {}
    for x in (line .. ","):gmatch("([^,]*),") do
        t[#t + 1] = x:match('^"(.*)"$') or false
    end
    return t
end

for _, c in ipairs(fields(run({ "SMEMBERS campaigns" })[1])) do campaigns[#campaigns + 1] = c end
table.sort(campaigns)

local cmds = {}
for i, c in ipairs(campaigns) do cmds[i] = "SMEMBERS windows:" .. c end
local lists = run(cmds)
local found = {}                       -- { c, start }
cmds = {}
for i, c in ipairs(campaigns) do
    for _, start in ipairs(fields(lists[i])) do
        found[#found + 1] = { c, start }
        cmds[#cmds + 1] = format("HMGET %s %s windows", c, start)
        cmds[#cmds + 1] = format("HMGET %s:%s seen_count time_updated", c, start)
    end
end
local replies = #cmds > 0 and run(cmds) or {}

local bad, seen_total, lat = {}, 0, {}
local seen = {}
for i, w in ipairs(found) do
    local c, start = w[1], w[2]
    local key = c .. " " .. start
    seen[key] = true
    local idv = values(replies[2 * i - 1])
    local hv = values(replies[2 * i])
    local n, updated = tonumber(hv[1]), tonumber(hv[2])
    if idv[1] ~= c .. ":" .. start or idv[2] ~= "windows:" .. c then
        bad[#bad + 1] = format("%s: campaign hash holds id %s, list %s", key, tostring(idv[1]),
                               tostring(idv[2]))
    end
    if n ~= want[key] then
        bad[#bad + 1] = format("%s: seen_count %s, sent %s", key, tostring(n),
                               tostring(want[key]))
    end
    seen_total = seen_total + (n or 0)
    local s = tonumber(start)
    if updated and from_ms and s >= from_ms and s + WINDOW <= to_ms then
        lat[#lat + 1] = updated - (s + WINDOW)
    end
end
local nwant = 0
for key, n in pairs(want) do
    nwant = nwant + 1
    if not seen[key] then
        bad[#bad + 1] = format("%s: missing (sent %d views)", key, n)
    end
end
table.sort(bad)

if #bad == 0 then
    print(format("exact: yes (%d windows, %d views)", nwant, seen_total))
else
    print(format("exact: NO (%d of %d windows wrong; %d views counted of %d): %s", #bad, nwant,
                 seen_total, nviews, table.concat(bad, "; ", 1, math.min(#bad, 4))))
end
if from_ms then
    table.sort(lat)
    local function pct(p)
        if #lat == 0 then return 0 end
        return lat[math.max(1, math.ceil(#lat * p))]
    end
    print(format("latency: p50 %d ms, p99 %d ms, max %d ms over %d windows", pct(0.5), pct(0.99),
                 #lat > 0 and lat[#lat] or 0, #lat))
end
os.exit(#bad == 0 and 0 or 1)
