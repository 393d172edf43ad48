-- Events of the Yahoo streaming benchmark's format for bench/kafka_ysb.sh:
--
--   luajit bench/ysb_gen.lua N events.jsonl campaigns.lua
--
-- writes N JSON events, one per line, and campaigns.lua, a Lua table of
-- ad_id -> campaign_id (100 campaigns of 10 ads, as the benchmark's
-- setup). 100 users, 100 pages, ad types and event types drawn in turn
-- from a fixed linear congruential generator: the same bytes every run.
-- Prints "views V" on stderr (events with event_type "view").
local n, events_path, campaigns_path = tonumber(arg[1]), arg[2], arg[3]
local floor, format, concat = math.floor, string.format, table.concat

local seed = 4242
local function rand(m)
    seed = (seed * 1103515245 + 12345) % 2147483648
    return floor(seed / 65536) % m
end
local function uuid()
    local h = {}
    for i = 1, 16 do h[i] = format("%02x", rand(256)) end
    local s = concat(h)
    return s:sub(1, 8) .. "-" .. s:sub(9, 12) .. "-" .. s:sub(13, 16) .. "-" .. s:sub(17, 20)
           .. "-" .. s:sub(21, 32)
end

local users, pages, ads, campaigns = {}, {}, {}, {}
for i = 1, 100 do users[i] = uuid() end
for i = 1, 100 do pages[i] = uuid() end
for c = 1, 100 do
    campaigns[c] = uuid()
    for a = 1, 10 do ads[(c - 1) * 10 + a] = { uuid(), c } end
end
local ad_types = { "banner", "modal", "sponsored-search", "mail", "mobile" }
local event_types = { "view", "click", "purchase" }

local f = assert(io.open(campaigns_path, "w"))
f:write("return {\n")
for _, ad in ipairs(ads) do f:write(format("[%q] = %q,\n", ad[1], campaigns[ad[2]])) end
f:write("}\n")
f:close()

local out = assert(io.open(events_path, "w"))
local buf, m, views = {}, 0, 0
local t0 = 1700000000000
for i = 1, n do
    local et = rand(3) + 1
    if et == 1 then views = views + 1 end
    m = m + 1
    buf[m] = format('{"user_id":"%s","page_id":"%s","ad_id":"%s","ad_type":"%s",'
                    .. '"event_type":"%s","event_time":"%d","ip_address":"1.2.3.4"}',
                    users[rand(100) + 1], pages[rand(100) + 1], ads[rand(1000) + 1][1],
                    ad_types[rand(5) + 1], event_types[et], t0 + floor(i / 10))
    if m == 8192 then out:write(concat(buf, "\n", 1, m), "\n"); m = 0 end
end
if m > 0 then out:write(concat(buf, "\n", 1, m), "\n") end
out:close()
io.stderr:write(format("views %d\n", views))
