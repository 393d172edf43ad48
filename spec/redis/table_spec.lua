-- Reference tables from Redis (a hash, a key pattern) joined with a stream:
-- loaded before the first batch, kept current (updates and deletes apply to
-- the records after them), and a table whose server is down at start makes
-- the job wait. redis-cli writes the input and the tables and reads the
-- output.

local driver = require "support.driver"
local redis_server = require "support.redis_server"

local render, sorted = redis_server.render, redis_server.sorted
local q = driver.quote

local CONF = { ["streaming.blockInterval"] = "100ms", ["streaming.batch.maxRetries"] = "2",
               ["streaming.batch.maxBackoff"] = "1s" }

-- e:in holds "key=value" items; each joined record goes to e:out as
-- key|value|campaign (left_outer_join: key|value|nil when the table lacks it).
local JOB = [[
local ember = require "ember"
local job = ember.job { name = "tables", batch_interval = "200ms" }

local ads = job:table { name = "ads", from = { redis = {{table_url}}, hash = "ads" },
                        refresh = "300ms",
                        key = function(field, value) return "ad" .. field end,
                        value = function(field, value) return value:upper() end }
local keys = job:table { name = "keys", from = { redis = {{table_url}}, pattern = "ad:*" },
                         refresh = "300ms",
                         key = function(k) return "ad" .. k:sub(4) end }

local pairs_ = job:redis { url = {{url}}, mode = "list", key = "e:in" }
   :map(function(s) return s:match("^(%w+)=(%w+)$") end)

pairs_:{{kind}}(ads)
   :to_redis { url = {{url}}, command = function(p)
       return "RPUSH", "e:out", p[1] .. "|" .. p[2][1] .. "|" .. tostring(p[2][2]) end }
pairs_:join(keys)
   :to_redis { url = {{url}}, command = function(p)
       return "RPUSH", "e:keys", p[1] .. "|" .. p[2][1] .. "|" .. p[2][2] end }

return job
]]


describe("reference tables from Redis", function()
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
        srv:cli("FLUSHALL")
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    -- The list, sorted, once it holds n items (what the check expects).
    local function wait_out(key, n)
        srv:wait_len(d, key, n, 20)
        return sorted(srv:lines("LRANGE", key, "0", "-1"))
    end

    it("joins every record, the first batch included, with the tables loaded before it",
       function()
        srv:cli("HSET", "ads", "1", "camp-a", "2", "camp-b")
        srv:cli("SET", "ad:1", "k1")
        srv:cli("SET", "ad:3", "k3")
        srv:cli("HSET", "ad:9", "not", "a string")     -- a pattern table takes string keys
        -- in the list before ember starts: the first batch takes them
        srv:cli("LPUSH", "e:in", "ad1=x", "ad2=y", "ad3=z", "ad1=w")
        d:write_job("tables", render(JOB, { url = q(srv.url), table_url = q(srv.url),
                                            kind = "join" }))
        d:start { conf = CONF }
        assert.same({ "ad1|w|CAMP-A", "ad1|x|CAMP-A", "ad2|y|CAMP-B" }, wait_out("e:out", 3))
        assert.same({ "ad1|w|k1", "ad1|x|k1", "ad3|z|k3" }, wait_out("e:keys", 3))
        assert.truthy(d:log():find("table 'ads' (", 1, true))
        assert.truthy(d:log():find("Redis hash 'ads' at " .. srv.url .. "): loaded, 2 entries",
                                   1, true), d:log_tail())
        assert.truthy(d:log():find("Redis keys 'ad:*' at " .. srv.url .. "): loaded, 2 entries",
                                   1, true), d:log_tail())
        -- the records were all in the first batch that had any
        local first
        for _, b in ipairs(d:batches("tables")) do
            if b.records > 0 then
                first = first or b
            end
        end
        assert.equal(4, first and first.records)
        assert.equal(3, srv:num("LLEN", "e:out"))
        assert.equal(0, srv:num("LLEN", "e:in:processing:tables"))
    end)

    it("reads a key pattern over many SCAN pages", function()
        local cmds = {}
        for i = 1, 2500 do
            cmds[#cmds + 1] = { "SET", "ad:" .. i, "v" .. i }
        end
        for i = 1, 300 do
            cmds[#cmds + 1] = { "SET", "other:" .. i, "x" }
        end
        srv:pipe(cmds)
        d:write_job("tables", render(JOB, { url = q(srv.url), table_url = q(srv.url),
                                            kind = "join" }))
        d:start { conf = CONF }
        d:wait_for_log("table 'keys' .*: loaded, 2500 entries", 20)
        srv:cli("LPUSH", "e:in", "ad1=x", "ad2500=y", "ad2501=z")
        assert.same({ "ad1|x|v1", "ad2500|y|v2500" }, wait_out("e:keys", 2))
    end)

    it("applies updates and deletes of the table to the records after them", function()
        srv:cli("HSET", "ads", "1", "camp-a", "2", "camp-b")
        d:write_job("tables", render(JOB, { url = q(srv.url), table_url = q(srv.url),
                                            kind = "left_outer_join" }))
        d:start { conf = CONF }
        d:wait_for_log("table 'ads' .*: loaded, 2 entries", 20)
        srv:cli("LPUSH", "e:in", "ad1=x", "ad2=y", "ad3=z")
        assert.same({ "ad1|x|CAMP-A", "ad2|y|CAMP-B", "ad3|z|nil" }, wait_out("e:out", 3))
        -- 1 changes, 2 goes, 3 comes
        local mark = d:log_mark()
        srv:cli("HSET", "ads", "1", "camp-c", "3", "camp-d")
        srv:cli("HDEL", "ads", "2")
        d:wait_for_log("table 'ads' .*: read again, 2 entries %(2 set, 1 deleted%)", 20,
                       { from = mark })
        srv:cli("DEL", "e:out")
        srv:cli("LPUSH", "e:in", "ad1=x", "ad2=y", "ad3=z")
        assert.same({ "ad1|x|CAMP-C", "ad2|y|nil", "ad3|z|CAMP-D" }, wait_out("e:out", 3))
        -- the whole hash gone: every key deleted
        mark = d:log_mark()
        srv:cli("DEL", "ads")
        d:wait_for_log("table 'ads' .*: read again, 0 entries %(0 set, 2 deleted%)", 20,
                       { from = mark })
        srv:cli("DEL", "e:out")
        srv:cli("LPUSH", "e:in", "ad1=x", "ad3=z")
        assert.same({ "ad1|x|nil", "ad3|z|nil" }, wait_out("e:out", 2))
    end)

    it("is loaded again by the new version of a reloaded job, which joins with it", function()
        srv:cli("HSET", "ads", "1", "camp-a")
        d:write_job("tables", render(JOB, { url = q(srv.url), table_url = q(srv.url),
                                            kind = "join" }))
        d:start { conf = CONF }
        d:wait_for_log("table 'ads' .*: loaded, 1 entries", 20)
        srv:cli("LPUSH", "e:in", "ad1=x", "ad2=y")
        assert.same({ "ad1|x|CAMP-A" }, wait_out("e:out", 1))
        srv:cli("HSET", "ads", "2", "camp-b")
        d:write_job("tables", render(JOB, { url = q(srv.url), table_url = q(srv.url),
                                            kind = "left_outer_join" }))
        local mark = d:log_mark()
        d:signal("HUP")
        d:wait_for_log("%[tables%] now running the new version", 20, { from = mark })
        d:wait_for_log("table 'ads' .*: loaded, 2 entries", 20, { from = mark })
        srv:cli("DEL", "e:out")
        srv:cli("LPUSH", "e:in", "ad1=x", "ad2=y", "ad3=z")
        assert.same({ "ad1|x|CAMP-A", "ad2|y|CAMP-B", "ad3|z|nil" }, wait_out("e:out", 3))
    end)

    it("waits for a table whose server is down at start, with a warning, and runs no batch "
       .. "before its first load", function()
        local port = redis_server.free_port()
        local table_url = "redis://127.0.0.1:" .. port
        d:write_job("tables", render(JOB, { url = q(srv.url), table_url = q(table_url),
                                            kind = "join" }))
        srv:cli("LPUSH", "e:in", "ad1=x", "ad2=y")
        d:start { conf = CONF }
        local line = d:wait_for_log("is not loaded yet", 20)
        assert.truthy(line:find("warn", 1, true), line)
        assert.truthy(line:find("tables.lua:4, Redis hash 'ads' at " .. table_url
                                .. ") is not loaded yet and its source cannot be read", 1, true),
                      line)
        assert.truthy(line:find("the job waits for its first load", 1, true), line)
        -- the batch is retried, never run
        d:wait_for_log("batch %d+ failed %(table 'ads'", 20)
        d:wait_for_log("the job is blocked", 20)
        assert.equal(0, srv:num("LLEN", "e:out"))
        assert.equal(0, srv:num("LLEN", "e:keys"))
        assert.equal(2, srv:num("LLEN", "e:in:processing:tables"))
        -- the table's server comes up: the held batch runs against the loaded table
        local tsrv = redis_server.start { port = port }
        finally(function() tsrv:stop() end)
        tsrv:cli("HSET", "ads", "1", "camp-a", "2", "camp-b")
        tsrv:cli("SET", "ad:2", "k2")
        assert.same({ "ad1|x|CAMP-A", "ad2|y|CAMP-B" }, wait_out("e:out", 2))
        assert.same({ "ad2|y|k2" }, wait_out("e:keys", 1))
        d:wait_for_log("went through after %d+ attempts", 20)
    end)
end)
