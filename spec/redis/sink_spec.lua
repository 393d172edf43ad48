-- to_redis and ember.redis(url): pipelined, pooled, every reply checked.
-- redis-cli writes the input and reads the output.

local driver = require "support.driver"
local redis_server = require "support.redis_server"

local render, seq = redis_server.render, redis_server.seq
local q = driver.quote

local CONF = { ["streaming.blockInterval"] = "100ms", ["streaming.batch.maxRetries"] = "1" }

local HSET_JOB = [[
local ember = require "ember"
local job = ember.job { name = "sink", batch_interval = "200ms" }

job:redis { url = {{url}}, mode = "list", key = "k1:in" }
   :to_redis { url = {{url}}, command = function(v) return "HSET", "k1:hash", v, 1 end }

return job
]]

-- Each batch: the same object twice, replies of several types, an error
-- reply as nil, err, and a line about them appended to f:log.
local FOREACH_JOB = [[
local ember = require "ember"
local job = ember.job { name = "sink", batch_interval = "100ms" }

job:redis { url = {{url}}, mode = "list", key = "f:in" }
   :foreach_batch(function(records)
       if #records == 0 then return end
       local r = assert(ember.redis({{url}}))
       assert(r == ember.redis({{url}}), "one object per url per batch")
       local total = assert(r:call("INCRBY", "f:total", #records))
       local list = assert(r:call("LRANGE", "f:fixed", 0, -1))
       local missing = r:call("GET", "f:missing")
       local ok, err = r:call("HSET", "f:string", "a", "b")
       local status = r:call{ "SET", "f:last", records[#records] }
       r:call("RPUSH", "f:log", table.concat({ type(total), #list, list[2],
           tostring(missing == require("ember.redis").null), tostring(ok),
           err:match("^%u+"), status }, " "))
   end)

return job
]]

-- A second job writing through the same pool.
local COPY_JOB = [[
local ember = require "ember"
local job = ember.job { name = "copy", batch_interval = "100ms" }

job:redis { url = {{url}}, mode = "list", key = "g:in" }
   :to_redis { url = {{url}}, command = function(v) return "RPUSH", "g:out", v end }

return job
]]

-- A command function that cannot make a command for some records: one
-- raises, one returns a table argument. dead_letter keeps them.
local POISON_JOB = [[
local ember = require "ember"
local job = ember.job { name = "poison", batch_interval = "200ms", on_error = "dead_letter" }

job:redis { url = {{url}}, mode = "list", key = "p:in" }
   :to_redis { url = {{url}}, command = function(v)
       if v == "boom" then error("cannot write " .. v) end
       if v == "nested" then return "SET", "p:" .. v, { 1 } end
       return "RPUSH", "p:out", v
   end }

return job
]]

-- A batch of many more records than one chunk of the sink (8192): c:in is
-- filled before ember starts, and the 1s batch takes all of it at once.
-- The command for one record raises (dead-lettered); the one for
-- c:wrong meets an error reply when that key holds a string.
local CHUNK_JOB = [[
local ember = require "ember"
local job = ember.job { name = "chunk", batch_interval = "1s", on_error = "dead_letter" }

job:redis { url = {{url}}, mode = "list", key = "c:in" }
   :to_redis { url = {{url}}, command = function(v)
       if v == {{poison}} then error("cannot write " .. v) end
       if v == {{wrong}} then return "HSET", "c:wrong", v, 1 end
       return "RPUSH", "c:out", v
   end }

return job
]]

local BAD_JOB = [[
local ember = require "ember"
local job = ember.job { name = "bad" }

job:redis { url = {{source_url}}, mode = "list", key = "x" }
   :to_redis { url = {{sink_url}}, command = function(v) return "SET", v, v end }

return job
]]


describe("to_redis and ember.redis", function()
    local srv, d

    setup(function()
        srv = redis_server.start()
    end)

    teardown(function()
        if srv then
            srv:stop()
        end
    end)

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    it("fails the batch on an error reply, logging the command and the error, acknowledges "
       .. "nothing while it fails, and goes on once the key is fixed", function()
        srv:cli("SET", "k1:hash", "a string, not a hash")
        srv:cli("LPUSH", "k1:in", "x1", "x2", "x3")
        d:write_job("sink", render(HSET_JOB, { url = q(srv.url) }))
        d:start { conf = CONF }
        local line = d:wait_for_log("WRONGTYPE", 10)
        assert.truthy(line:find('HSET "k1:hash" "x1" "1" (record 1 of the batch) failed: WRONGTYPE',
                                1, true), line)
        assert.truthy(line:find("to_redis redis://127.0.0.1:" .. srv.port, 1, true), line)
        d:wait_for_log("the job is blocked", 10)
        assert.same({ "x1", "x2", "x3" },
                    redis_server.sorted(srv:lines("LRANGE", "k1:in:processing:sink", "0", "-1")))
        assert.equal("a string, not a hash", srv:cli("GET", "k1:hash"):gsub("\n$", ""))
        -- The batch is held, not dropped: fixed, it goes through.
        srv:cli("DEL", "k1:hash")
        d:wait_for_log("went through after %d+ attempts", 30)
        d:wait_until(function()
            local n = srv:num("LLEN", "k1:in:processing:sink")
            return n == 0, n .. " items still in processing"
        end, 10, 0.05, "the items acknowledged")
        assert.equal(3, srv:num("HLEN", "k1:hash"))
    end)

    it("ember.redis(url) returns replies as Lua values and gives its connection back after "
       .. "each batch", function()
        srv:cli("RPUSH", "f:fixed", "one", "two")
        srv:cli("SET", "f:string", "s")
        local items = seq("f", 1, 12)
        d:write_job("sink", render(FOREACH_JOB, { url = q(srv.url) }))
        d:write_job("copy", render(COPY_JOB, { url = q(srv.url) }))
        -- one pooled connection for both jobs: it must come back after each batch
        local conf = { ["connector.pool.size"] = "1" }
        for k, v in pairs(CONF) do
            conf[k] = v
        end
        d:start { conf = conf }
        d:wait_for_log("%(job sink%): connected", 10)
        d:wait_for_log("%(job copy%): connected", 10)
        -- one item a batch, each job in turn
        for i, v in ipairs(items) do
            srv:cli("LPUSH", "f:in", v)
            srv:cli("LPUSH", "g:in", v)
            d:wait_until(function()
                return srv:num("LLEN", "f:log") == i and srv:num("LLEN", "g:out") == i
            end, 3, 0.02, "batch " .. i .. " of both jobs")
        end
        assert.falsy(d:log():find("busy", 1, true))
        assert.equal(12, srv:num("GET", "f:total"))
        local log = srv:lines("LRANGE", "f:log", "0", "-1")
        for _, l in ipairs(log) do
            assert.equal("number 2 two true nil WRONGTYPE OK", l)
        end
        assert.equal("f00012", (srv:cli("GET", "f:last"):gsub("\n$", "")))
        -- two sources with their acknowledging connections, the pool's one, redis-cli
        local clients = tonumber(srv:cli("INFO", "clients"):match("connected_clients:(%d+)"))
        assert.is_true(clients <= 6, clients .. " clients connected")
    end)

    it("sets a record its command function cannot write aside by on_error, writes the rest, "
       .. "and acknowledges the batch", function()
        srv:cli("LPUSH", "p:in", "a", "boom", "b", "nested", "c")
        d:write_job("poison", render(POISON_JOB, { url = q(srv.url) }))
        d:start { conf = CONF }
        d:wait_until(function()
            return srv:num("LLEN", "p:out") == 3 and srv:num("LLEN", "p:in:processing:poison") == 0
        end, 10, 0.05, "the three good records written and the batch acknowledged")
        assert.same({ "a", "b", "c" }, srv:lines("LRANGE", "p:out", "0", "-1"))
        local dead = d:wait_until(function()
            local f = io.open(d.checkpoint_dir .. "/poison/dead_letter.jsonl")
            local text = f and f:read("*a")
            if f then f:close() end
            local n = text and select(2, text:gsub("\n", "")) or 0
            return n == 2 and text, n .. " dead letters"
        end, 10, 0.05, "two dead letters")
        assert.truthy(dead:find('"record":"boom"', 1, true), dead)
        assert.truthy(dead:find("cannot write boom", 1, true), dead)
        assert.truthy(dead:find('"record":"nested"', 1, true), dead)
        assert.truthy(dead:find("argument 3 is a table", 1, true) or dead:find("table", 1, true), dead)
        assert.falsy(d:log():find("failed after", 1, true), "the batch must not fail")
    end)

    -- The batch (in log order, each once) holding the index-th record taken
    -- in, and the record's position in it.
    local function locate(index)
        local seen, before = {}, 0
        for _, b in ipairs(d:batches("chunk")) do
            if not seen[b.time] then
                seen[b.time] = true
                if index <= before + b.records then
                    return b, index - before
                end
                before = before + b.records
            end
        end
        error("no batch holds record " .. index)
    end

    local function fill_input()
        srv:cli("FLUSHALL")
        local items = seq("c", 1, 20000)
        local cmds = {}
        for i, v in ipairs(items) do
            cmds[i] = { "LPUSH", "c:in", v }
        end
        srv:pipe(cmds)
        return items
    end

    it("writes a batch larger than a chunk while computing it: every record once, in order, "
       .. "a poison record set aside", function()
        local items = fill_input()
        d:write_job("chunk", render(CHUNK_JOB, { url = q(srv.url), poison = q(items[17000]),
                                                 wrong = q("none") }))
        d:start { conf = CONF }
        d:wait_until(function()
            return srv:num("LLEN", "c:out") == 19999
                   and srv:num("LLEN", "c:in:processing:chunk") == 0
        end, 20, 0.05, "19999 records written and acknowledged")
        local want = {}
        for i, v in ipairs(items) do
            if i ~= 17000 then
                want[#want + 1] = v
            end
        end
        assert.same(want, srv:lines("LRANGE", "c:out", "0", "-1"))
        local batch, pos = locate(17000)
        local dead = d:wait_until(function()
            local f = io.open(d.checkpoint_dir .. "/chunk/dead_letter.jsonl")
            local text = f and f:read("*a")
            if f then f:close() end
            return text and text:find("\n") and text
        end, 10, 0.05, "the dead letter")
        assert.truthy(dead:find('"record":"' .. items[17000] .. '"', 1, true), dead)
        assert.truthy(dead:find("failed on record " .. pos .. ":", 1, true), dead)
        assert.is_true(batch.records > 8192, batch.line)
    end)

    it("fails the batch when a chunk meets an error reply, writes no chunk of that batch "
       .. "after it while it fails, and writes them all once fixed", function()
        local items = fill_input()
        srv:cli("SET", "c:wrong", "a string, not a hash")
        d:write_job("chunk", render(CHUNK_JOB, { url = q(srv.url), poison = q("none"),
                                                 wrong = q(items[19000]) }))
        d:start { conf = CONF }
        local line = d:wait_for_log("WRONGTYPE", 20)
        d:wait_for_log("the job is blocked", 20)
        -- What the failing runs wrote, and what they left unacknowledged.
        local seen = {}
        for _, v in ipairs(srv:lines("LRANGE", "c:out", "0", "-1")) do
            seen[v] = (seen[v] or 0) + 1
        end
        local processing = srv:num("LLEN", "c:in:processing:chunk")
        -- Fixed, the held batch goes through (and is logged, with its size).
        srv:cli("DEL", "c:wrong")
        d:wait_for_log("went through after %d+ attempts", 60)
        local batch, pos
        d:wait_until(function()
            local ok
            ok, batch, pos = pcall(locate, 19000)
            return ok, "the batch of record 19000 not logged yet"
        end, 20, 0.1, "the held batch's line")
        assert.truthy(line:find('HSET "c:wrong" "' .. items[19000] .. '" "1" (record ' .. pos
                                .. ' of the batch) failed: WRONGTYPE', 1, true), line)
        -- Every failing run wrote the chunks up to the failing one again;
        -- the rest of that batch was never written while it failed.
        local first = 19000 - pos + 1                       -- the batch's first record
        local written_to = first - 1 + math.min(batch.records, math.ceil(pos / 8192) * 8192)
        for i = first, first + batch.records - 1 do
            if i == 19000 or i > written_to then
                assert.is_nil(seen[items[i]], "record " .. i)
            else
                assert.is_true((seen[items[i]] or 0) >= 2, "record " .. i)
            end
        end
        assert.is_true(processing >= batch.records)
        -- And now no record of it is missing.
        d:wait_until(function()
            local present = {}
            for _, v in ipairs(srv:lines("LRANGE", "c:out", "0", "-1")) do
                present[v] = true
            end
            for i = first, first + batch.records - 1 do
                if i ~= 19000 and not present[items[i]] then
                    return false, "record " .. i .. " not written"
                end
            end
            return srv:num("HLEN", "c:wrong") == 1, "record 19000 not in c:wrong"
        end, 30, 0.2, "every record of the held batch written")
    end)

    it("rejects a bad url at load time, naming the job file, its line and the option", function()
        d:write_job("bad", render(BAD_JOB, { source_url = q("http://127.0.0.1:1"),
                                             sink_url = q(srv.url) }))
        d:start { conf = CONF }
        local line = d:wait_for_log("option 'url'", 10)
        assert.truthy(line:find("bad.lua:4", 1, true), line)
        assert.truthy(line:find("expected redis://", 1, true), line)
        d:stop()

        d = driver.new()
        d:write_job("bad", render(BAD_JOB, { source_url = q(srv.url),
                                             sink_url = q("redis://:secret@127.0.0.1:notaport") }))
        d:start { conf = CONF }
        line = d:wait_for_log("option 'url'", 10)
        assert.truthy(line:find("bad.lua:5", 1, true), line)
        assert.truthy(line:find("port must be a number", 1, true), line)
        assert.falsy(d:log():find("secret", 1, true), "the password reached the log")
    end)
end)
