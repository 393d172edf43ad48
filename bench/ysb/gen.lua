-- The Yahoo Streaming Benchmark's data, from its definition
-- (yahoo/streaming-benchmarks): 100 campaigns of 10 ads each, and ad events
-- as JSON objects with the fields, in order, user_id, page_id, ad_id,
-- ad_type (banner, modal, sponsored-search, mail, mobile), event_type
-- (view, click, purchase), event_time (ms since the epoch, as a string)
-- and ip_address. Ids are UUIDs. Everything comes from a fixed linear
-- congruential generator: the same bytes every run.
--
--   luajit bench/ysb/gen.lua setup > setup.redis
--       Redis commands (one per line, for redis-cli): the benchmark's
--       "campaigns" set and SET <ad_id> <campaign_id> per ad, and the hash
--       ad_campaign (ad_id -> campaign_id) that jobs/ysb.lua's table reads.
--   luajit bench/ysb/gen.lua campaigns campaigns.lua
--       the ad -> campaign table as a Lua table (for bench/kafka_ysb.sh).
--   luajit bench/ysb/gen.lua events N SPAN_MS events.jsonl expected.txt
--       N events, one per line, with event times spread evenly over SPAN_MS
--       from a fixed start (a backlog to read as fast as possible).
--   luajit bench/ysb/gen.lua paced RATE SECONDS expected.txt > events.jsonl
--       events at RATE per second for SECONDS, each stamped with the wall
--       clock when it is written (the benchmark's generator), to stdout;
--       on stderr, at the end: "sent N in S s (R/s)". A reader slower than
--       RATE slows it down (at most 10 ms of events per write): R is the
--       rate reached.
--
-- expected.txt: "<campaign> <window start ms> <views>" per window with
-- views (10 s tumbling windows), then "views <V>" and "events <N>": what
-- bench/ysb/check.lua compares Redis with.
local ffi = require "ffi"
local has_buffer, buffer = pcall(require, "string.buffer")

local floor, format, concat = math.floor, string.format, table.concat
local tonumber = tonumber

local WINDOW = 10000
local AD_TYPES = { "banner", "modal", "sponsored-search", "mail", "mobile" }
local EVENT_TYPES = { "view", "click", "purchase" }

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
    for a = 1, 10 do ads[(c - 1) * 10 + a] = { uuid(), campaigns[c] } end
end

-- A pool of events without their time: the text before and after the
-- event_time value, the campaign, whether it is a view.
local POOL = 65536
local pre, post, camp, view = {}, {}, {}, {}
for i = 1, POOL do
    local et = rand(3) + 1
    local ad = ads[rand(1000) + 1]
    pre[i] = format('{"user_id":"%s","page_id":"%s","ad_id":"%s","ad_type":"%s",'
                    .. '"event_type":"%s","event_time":"', users[rand(100) + 1],
                    pages[rand(100) + 1], ad[1], AD_TYPES[rand(5) + 1], EVENT_TYPES[et])
    post[i] = '","ip_address":"1.2.3.4"}\n'
    camp[i], view[i] = ad[2], et == 1
end

local counts, nviews, nevents = {}, 0, 0   -- campaign .. " " .. window -> views
local function count(i, t)
    nevents = nevents + 1
    if view[i] then
        nviews = nviews + 1
        local k = camp[i] .. " " .. (t - t % WINDOW)
        counts[k] = (counts[k] or 0) + 1
    end
end

local function write_expected(path)
    local f = assert(io.open(path, "w"))
    local keys = {}
    for k in pairs(counts) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do f:write(k, " ", counts[k], "\n") end
    f:write("views ", nviews, "\n", "events ", nevents, "\n")
    f:close()
end

local function new_out(file)
    if has_buffer then
        local b = buffer.new()
        return {
            put = function(a, t, c) b:put(a, t, c) end,
            len = function() return #b end,
            flush = function() file:write(b:get()); file:flush() end,
        }
    end
    local parts, m = {}, 0
    return {
        put = function(a, t, c) parts[m + 1], parts[m + 2], parts[m + 3] = a, t, c; m = m + 3 end,
        len = function() return m * 80 end,
        flush = function() file:write(concat(parts, "", 1, m)); file:flush(); m = 0 end,
    }
end

local mode = arg[1]
if mode == "setup" then
    local out = {}
    for _, c in ipairs(campaigns) do out[#out + 1] = "SADD campaigns " .. c end
    for _, ad in ipairs(ads) do
        out[#out + 1] = "SET " .. ad[1] .. " " .. ad[2]
        out[#out + 1] = "HSET ad_campaign " .. ad[1] .. " " .. ad[2]
    end
    io.write(concat(out, "\n"), "\n")
elseif mode == "campaigns" then
    local f = assert(io.open(arg[2], "w"))
    f:write("return {\n")
    for _, ad in ipairs(ads) do f:write(format("[%q] = %q,\n", ad[1], ad[2])) end
    f:write("}\n")
    f:close()
elseif mode == "events" then
    local n, span, path, expected = tonumber(arg[2]), tonumber(arg[3]), arg[4], arg[5]
    local f = assert(io.open(path, "w"))
    local out = new_out(f)
    local t0 = 1700000000000
    for i = 0, n - 1 do
        local j = i % POOL + 1
        local t = t0 + floor(i * span / n)
        out.put(pre[j], tostring(t), post[j])
        count(j, t)
        if out.len() > 1048576 then out.flush() end
    end
    out.flush()
    f:close()
    write_expected(expected)
elseif mode == "paced" then
    local rate, seconds, expected = tonumber(arg[2]), tonumber(arg[3]), arg[4]
    ffi.cdef [[
        typedef struct { long tv_sec; long tv_nsec; } ysb_gen_timespec;
        int clock_gettime(int clk, ysb_gen_timespec *ts);
        int poll(void *fds, unsigned long n, int timeout);
    ]]
    local ts = ffi.new("ysb_gen_timespec")
    local function now_ms()
        ffi.C.clock_gettime(0, ts)
        return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
    end
    local out = new_out(io.stdout)
    local start = now_ms()
    local stop = start + seconds * 1000
    local sent, j = 0, 0
    while true do
        local now = now_ms()
        if now >= stop then break end
        local due = floor((now - start) * rate / 1000)
        local most = sent + floor(rate / 100) + 1     -- 10 ms of events at a time: a
        if due > most then                              -- writer behind sends less, and says so
            due = most
        end
        if due > sent then
            local t = tostring(floor(now))
            local tn = tonumber(t)
            for _ = sent + 1, due do
                j = j % POOL + 1
                out.put(pre[j], t, post[j])
                count(j, tn)
            end
            sent = due
            out.flush()
        end
        ffi.C.poll(nil, 0, 1)
    end
    local elapsed = (now_ms() - start) / 1000
    write_expected(expected)
    io.stderr:write(format("sent %d in %.2f s (%.0f/s)\n", sent, elapsed, sent / elapsed))
else
    io.stderr:write("usage: gen.lua setup | events N SPAN_MS events.jsonl expected.txt | "
                    .. "paced RATE SECONDS expected.txt\n")
    os.exit(2)
end
