-- A reference table from a compacted Kafka topic (librdkafka's mock
-- cluster; kcat writes the topic): read from the beginning to the end of
-- every partition before the first batch, then followed, a tombstone (a
-- null value) deleting its key. The stream comes from a Redis list and the
-- output goes to another (redis-cli reads it).

local driver = require "support.driver"
local kafka_mock = require "support.kafka_mock"
local redis_server = require "support.redis_server"
local http = require "support.http"
local cjson = require "cjson"

local render, sorted = redis_server.render, redis_server.sorted
local q = driver.quote

local CONF = { ["streaming.blockInterval"] = "100ms", ["streaming.batch.maxRetries"] = "2",
               ["streaming.batch.maxBackoff"] = "1s" }

local JOB = [[
local ember = require "ember"
local job = ember.job { name = "ktable", batch_interval = "200ms" }

local ads = job:table { name = "ads", from = { kafka = {{brokers}}, topic = "ads",
                                               config = { ["fetch.wait.max.ms"] = 10,
                                                          ["reconnect.backoff.max.ms"] = 500 } },
                        value = function(field, value) return value:upper() end }

job:redis { url = {{url}}, mode = "list", key = "k:in" }
   :map(function(s) return s:match("^(%w+)=(%w+)$") end)
   :left_outer_join(ads)
   :to_redis { url = {{url}}, command = function(p)
       return "RPUSH", "k:out", p[1] .. "|" .. p[2][1] .. "|" .. tostring(p[2][2]) end }

return job
]]


-- Writes "key\tvalue" lines to the topic with kcat; an empty value is a
-- tombstone (-Z: empty values as null).
local function produce(k, lines)
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(table.concat(lines, "\n"), "\n")
    f:close()
    local p = io.popen("timeout 60 kcat -b " .. k.bootstrap .. " -P -t ads -Z -K '\t' -l "
                       .. path .. " 2>&1")
    local out = p:read("*a")
    local ok = p:close()
    os.remove(path)
    assert(ok, "kcat: " .. out)
end


describe("reference tables from a compacted Kafka topic", function()
    local srv, k, d

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
        k = kafka_mock.start { topics = { "ads:3" } }
        d = driver.new()
    end)

    after_each(function()
        d:stop()
        k:stop()
    end)

    local function out(n)
        srv:wait_len(d, "k:out", n, 20)
        return sorted(srv:lines("LRANGE", "k:out", "0", "-1"))
    end

    -- set and deleted counts of the "followed" log lines since mark
    local function followed(mark)
        local set, gone = 0, 0
        for _, l in ipairs(d:log_lines("table 'ads' .*: followed", { from = mark })) do
            local s, g = l:match("%((%d+) set, (%d+) deleted%)")
            set, gone = set + s, gone + g
        end
        return set, gone
    end

    it("is read to the end before the first batch, later records of a key winning and "
       .. "tombstones deleting", function()
        produce(k, { "ad1\tcamp-a", "ad2\tcamp-b", "ad3\tcamp-c", "ad1\tcamp-x", "ad3\t",
                     "ad4\tcamp-d" })
        srv:cli("RPUSH", "k:in", "ad1=1", "ad2=2", "ad3=3", "ad4=4", "ad5=5")
        d:write_job("ktable", render(JOB, { url = q(srv.url), brokers = q(k.bootstrap) }))
        d:start { conf = CONF }
        assert.same({ "ad1|1|CAMP-X", "ad2|2|CAMP-B", "ad3|3|nil", "ad4|4|CAMP-D", "ad5|5|nil" },
                    out(5))
        assert.truthy(d:log():find("Kafka topic 'ads' at " .. k.bootstrap .. "): loaded, 3 entries",
                                   1, true), d:log_tail())
    end)

    it("follows the topic: updates and deletes apply to the records after them", function()
        produce(k, { "ad1\tcamp-a", "ad2\tcamp-b" })
        d:write_job("ktable", render(JOB, { url = q(srv.url), brokers = q(k.bootstrap) }))
        d:start { conf = CONF }
        d:wait_for_log("table 'ads' .*: loaded, 2 entries", 30)
        local mark = d:log_mark()
        produce(k, { "ad1\tcamp-z", "ad2\t", "ad3\tcamp-c" })
        d:wait_until(function()
            local set, gone = followed(mark)
            return set == 2 and gone == 1, set .. " set, " .. gone .. " deleted"
        end, 20, 0.05, "the update, the new key and the delete followed")
        srv:cli("RPUSH", "k:in", "ad1=1", "ad2=2", "ad3=3")
        assert.same({ "ad1|1|CAMP-Z", "ad2|2|nil", "ad3|3|CAMP-C" }, out(3))
    end)

    -- The table as the jobs API shows it, once want(table) holds.
    local function shown(want, what)
        local port = d:http_port()
        return d:wait_until(function()
            local j = http.json(port, "/api/v1/jobs/ktable")
            local t = j.tables and j.tables[1]
            return t and want(t) and t, cjson.encode(j.tables)
        end, 40, 0.05, what)
    end

    it("is shown in the jobs API; a later look for new partitions that fails makes it stale, "
       .. "then fresh again", function()
        produce(k, { "ad1\tcamp-a", "ad2\tcamp-b", "ad3\tcamp-c" })
        d:write_job("ktable", render(JOB, { url = q(srv.url), brokers = q(k.bootstrap) }))
        d:start { conf = CONF }
        local t = shown(function(t) return t.loaded end, "the table loaded")
        assert.equal("kafka", t.kind)
        assert.equal("Kafka topic 'ads' at " .. k.bootstrap, t.source)
        assert.equal(3, t.entries)
        assert.is_false(t.stale)
        assert.equal(0, t.loadErrors)
        -- the brokers answer metadata for the topic with an error
        -- (LEADER_NOT_AVAILABLE): the table's next look for partitions (at
        -- most 5 s away) fails
        k:command("topic-error ads 5")
        t = shown(function(t) return t.stale end, "the table stale")
        assert.is_true(t.loadErrors >= 1)
        assert.truthy(t.lastError:find("topic 'ads'", 1, true), t.lastError)
        assert.equal(3, t.entries)
        d:wait_for_log("table 'ads' .*: cannot read its source %(", 20)
        -- its entries still join
        srv:cli("RPUSH", "k:in", "ad1=1")
        assert.same({ "ad1|1|CAMP-A" }, out(1))
        -- the topic answers again: fresh again, and following
        k:command("topic-error ads 0")
        t = shown(function(t) return not t.stale end, "the table fresh again")
        d:wait_for_log("table 'ads' .*: its source can be read again", 20)
        produce(k, { "ad4\tcamp-d" })
        shown(function(t) return t.entries == 4 end, "the new key followed")
    end)

    it("makes the job wait while the brokers are down at start", function()
        produce(k, { "ad1\tcamp-a" })
        k:command("down 1")
        srv:cli("RPUSH", "k:in", "ad1=1")
        d:write_job("ktable", render(JOB, { url = q(srv.url), brokers = q(k.bootstrap) }))
        d:start { conf = CONF }
        local line = d:wait_for_log("is not loaded yet", 30)
        assert.truthy(line:find("warn", 1, true), line)
        assert.truthy(line:find("the job waits for its first load", 1, true), line)
        d:wait_for_log("batch %d+ failed %(table 'ads'", 20)
        assert.equal(0, srv:num("LLEN", "k:out"))
        assert.equal(1, srv:num("LLEN", "k:in:processing:ktable"))
        k:command("up 1")
        assert.same({ "ad1|1|CAMP-A" }, out(1))
    end)
end)
