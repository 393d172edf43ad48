-- stream:lookup_redis{...}: a chunk of keys per pipelined round trip, a
-- TTL'd cache, never one call per record. The lookups go to a Redis server
-- of their own, so its INFO counts only them: commandstats gives the
-- commands it ran, and total_reads_processed the reads it made, about one
-- per round trip.

local driver = require "support.driver"
local redis_server = require "support.redis_server"

local render, sorted = redis_server.render, redis_server.sorted
local q = driver.quote

local CONF = { ["streaming.blockInterval"] = "100ms", ["streaming.batch.maxRetries"] = "2",
               ["streaming.batch.maxBackoff"] = "1s" }

-- l:in holds "ad=n" items; each record goes to l:out as ad|n|campaign.
local JOB = [[
local ember = require "ember"
local job = ember.job { name = "lookup", batch_interval = "500ms", on_error = "dead_letter" }

job:redis { url = {{url}}, mode = "list", key = "l:in" }
   :map(function(s) return s:match("^([%w:]+)=(%w+)$") end)
   :lookup_redis { url = {{lookup_url}}, command = "HGET", chunk = {{chunk}}, ttl = {{ttl}},
                   key = function(ad) return "ad_campaign", ad end, inner = {{inner}},
                   cache_max = {{cache_max}} }
   :to_redis { url = {{url}}, command = function(p)
       return "RPUSH", "l:out", p[1] .. "|" .. p[2][1] .. "|" .. tostring(p[2][2]) end }

return job
]]

-- cmdstat_<cmd> calls from INFO commandstats (0 when never run).
local function calls(srv, cmd)
    local info = srv:cli("INFO", "commandstats")
    return tonumber(info:match("cmdstat_" .. cmd .. ":calls=(%d+)")) or 0
end

local function reads(srv)
    return tonumber(srv:cli("INFO", "stats"):match("total_reads_processed:(%d+)"))
end


describe("lookup_redis", function()
    local srv, lsrv, d

    setup(function()
        srv = redis_server.start()
        lsrv = redis_server.start()
    end)

    teardown(function()
        if srv then
            srv:stop()
        end
        if lsrv then
            lsrv:stop()
        end
    end)

    before_each(function()
        srv:cli("FLUSHALL")
        lsrv:cli("FLUSHALL")
        lsrv:cli("CONFIG", "RESETSTAT")
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    -- the "lookup_redis at ...: N records, K keys asked in R round trips"
    -- lines of the log: totals
    local function trips()
        local recs, keys, rts, lines = 0, 0, 0, 0
        for _, l in ipairs(d:log_lines("lookup_redis at .*round trip")) do
            local n, k, r = l:match(": (%d+) records?, (%d+) keys? asked in (%d+) round trip")
            recs, keys, rts, lines = recs + n, keys + k, rts + r, lines + 1
        end
        return recs, keys, rts, lines
    end

    it("asks each distinct key once, a chunk per round trip, and joins every record", function()
        local fields = {}
        for i = 1, 10 do
            fields[#fields + 1] = "ad" .. i
            fields[#fields + 1] = "camp" .. ((i - 1) % 3)
        end
        lsrv:cli("HSET", "ad_campaign", unpack(fields))
        -- 600 records over 12 ads, two of which have no campaign
        local cmds, want = {}, {}
        for i = 1, 600 do
            local ad = "ad" .. ((i - 1) % 12 + 1)
            cmds[#cmds + 1] = { "RPUSH", "l:in", ad .. "=" .. i }
            local n = (i - 1) % 12 + 1
            want[#want + 1] = ad .. "|" .. i .. "|" .. (n <= 10 and ("camp" .. ((n - 1) % 3)) or "nil")
        end
        srv:pipe(cmds)
        -- what two INFOs in a row count themselves (redis-cli's request,
        -- and the read of its close)
        local info_cost = -reads(lsrv) + reads(lsrv)
        local reads0 = reads(lsrv)
        d:write_job("lookup", render(JOB, { url = q(srv.url), lookup_url = q(lsrv.url),
                                            chunk = 5, ttl = q("1h"), inner = "false", cache_max = 1000 }))
        d:start { conf = CONF }
        srv:wait_len(d, "l:out", 600, 30)
        local read = reads(lsrv) - reads0 - info_cost
        assert.same(sorted(want), sorted(srv:lines("LRANGE", "l:out", "0", "-1")))
        -- 12 keys, cached for an hour: 12 HGETs for 600 records, however the
        -- records fell into batches
        assert.equal(12, calls(lsrv, "hget"))
        local recs, keys, rts, lines = trips()
        assert.equal(600, recs)
        assert.equal(12, keys)
        -- chunks of 5: 12 keys take at least 3 round trips, at most one
        -- more per batch that asked for any
        assert.is_true(rts >= 3 and rts <= 2 + lines, rts .. " round trips in " .. lines .. " batches")
        -- and the server read one request per round trip: the chunk's
        -- commands came together
        assert.equal(rts, read)
    end)

    it("without a cache asks once per distinct key of each batch, never per record", function()
        lsrv:cli("HSET", "ad_campaign", "ad1", "c1", "ad2", "c2")
        local cmds = {}
        for i = 1, 300 do
            cmds[#cmds + 1] = { "RPUSH", "l:in", "ad" .. (i % 2 + 1) .. "=" .. i }
        end
        srv:pipe(cmds)
        d:write_job("lookup", render(JOB, { url = q(srv.url), lookup_url = q(lsrv.url),
                                            chunk = 100, ttl = 0, inner = "false", cache_max = 1000 }))
        d:start { conf = CONF }
        srv:wait_len(d, "l:out", 300, 30)
        local recs, keys, rts, lines = trips()
        assert.equal(300, recs)
        assert.equal(keys, calls(lsrv, "hget"))
        -- two keys per batch that had records, in one round trip
        assert.equal(2 * lines, keys)
        assert.equal(lines, rts)
        assert.is_true(keys < 300 / 10, keys .. " HGETs for 300 records")
    end)

    it("asks again once the ttl has passed, and inner drops records Redis has nothing for",
       function()
        lsrv:cli("HSET", "ad_campaign", "ad1", "old")
        d:write_job("lookup", render(JOB, { url = q(srv.url), lookup_url = q(lsrv.url),
                                            chunk = 10, ttl = q("1s"), inner = "true", cache_max = 1000 }))
        d:start { conf = CONF }
        srv:cli("RPUSH", "l:in", "ad1=1", "ad2=2")
        srv:wait_len(d, "l:out", 1, 20)
        assert.same({ "ad1|1|old" }, srv:lines("LRANGE", "l:out", "0", "-1"))
        lsrv:cli("HSET", "ad_campaign", "ad1", "new", "ad2", "two")
        -- within the ttl the cached replies stand; past it, new ones come
        d:wait_until(function()
            srv:cli("DEL", "l:out")
            srv:cli("RPUSH", "l:in", "ad1=3", "ad2=4")
            local ok = pcall(srv.wait_len, srv, d, "l:out", 1, 3)
            local got = sorted(srv:lines("LRANGE", "l:out", "0", "-1"))
            return #got == 2 and got[1] == "ad1|3|new" and got[2] == "ad2|4|two",
                   table.concat(got, " ")
        end, 20, 0.1, "the new campaigns after the ttl")
        assert.is_true(calls(lsrv, "hget") >= 4)
    end)

    it("starts a full cache again empty, the records of that batch keeping what it held",
       function()
        lsrv:cli("HSET", "ad_campaign", "ad1", "c1", "ad2", "c2", "ad3", "c3")
        d:write_job("lookup", render(JOB, { url = q(srv.url), lookup_url = q(lsrv.url),
                                            chunk = 10, ttl = q("1h"), inner = "false",
                                            cache_max = 2 }))
        d:start { conf = CONF }
        srv:cli("RPUSH", "l:in", "ad1=1", "ad2=2")
        srv:wait_len(d, "l:out", 2, 20)
        assert.equal(2, calls(lsrv, "hget"))
        -- ad1 from the cache, ad3 asked: the cache overflows and starts again
        srv:cli("RPUSH", "l:in", "ad1=3", "ad3=4")
        srv:wait_len(d, "l:out", 4, 20)
        assert.same({ "ad1|1|c1", "ad1|3|c1", "ad2|2|c2", "ad3|4|c3" },
                    sorted(srv:lines("LRANGE", "l:out", "0", "-1")))
        assert.equal(3, calls(lsrv, "hget"))
        -- the new cache holds ad3 only: ad1 is asked again
        srv:cli("RPUSH", "l:in", "ad1=5", "ad3=6")
        srv:wait_len(d, "l:out", 6, 20)
        assert.equal(4, calls(lsrv, "hget"))
    end)

    it("sets the records whose reply is an error aside by on_error, and retries a batch "
       .. "whose server is down", function()
        lsrv:cli("HSET", "ad_campaign", "ad1", "c1")
        lsrv:cli("SET", "wrong", "a string")
        local JOB2 = JOB:gsub('return "ad_campaign", ad', 'if ad == "bad" then return "wrong", '
                               .. '"f" end return "ad_campaign", ad')
        d:write_job("lookup", render(JOB2, { url = q(srv.url), lookup_url = q(lsrv.url),
                                             chunk = 10, ttl = q("1h"), inner = "false", cache_max = 1000 }))
        d:start { conf = CONF }
        srv:cli("RPUSH", "l:in", "ad1=1", "bad=2", "ad1=3")
        srv:wait_len(d, "l:out", 2, 20)
        assert.same({ "ad1|1|c1", "ad1|3|c1" }, sorted(srv:lines("LRANGE", "l:out", "0", "-1")))
        local dead = d:wait_until(function()
            local text = driver.read_file(d.checkpoint_dir .. "/lookup/dead_letter.jsonl")
            return text and text:find("WRONGTYPE", 1, true) and text, text
        end, 10, 0.05, "the dead letter")
        assert.truthy(dead:find('"record":"(bad, 2)"', 1, true), dead)
        assert.truthy(dead:find('HGET failed: WRONGTYPE', 1, true), dead)
        -- the lookup server goes away: the batch fails and is retried
        lsrv:shutdown()
        srv:cli("RPUSH", "l:in", "ad9=9")
        d:wait_for_log("batch %d+ failed %(lookup_redis at .*lookup%.lua:6: ", 20)
        assert.equal(2, srv:num("LLEN", "l:out"))
        lsrv:spawn()
        lsrv:cli("HSET", "ad_campaign", "ad9", "c9")
        srv:wait_len(d, "l:out", 3, 30)
        d:wait_until(function()
            local n = srv:num("LLEN", "l:in:processing:lookup")
            return n == 0, n .. " items in processing"
        end, 10, 0.05, "the batch acknowledged")
        assert.equal("ad9|9|c9", srv:lines("LRANGE", "l:out", "2", "2")[1])
    end)
end)
