-- ember.redis(url):pipeline(): several commands, one round trip, every
-- reply in order, error replies per command. A real redis-server; the
-- round trips are counted by the server itself (INFO stats'
-- total_reads_processed, read in the same pipeline before and after the
-- commands), and redis-cli checks what was written.

local driver = require "support.driver"
local redis_server = require "support.redis_server"

local render = redis_server.render
local q = driver.quote

local CONF = { ["streaming.blockInterval"] = "100ms" }

-- One batch of the generator's single record runs the commands; the job
-- prints one line per reply (type and value) on stdout, then DONE. The
-- generator is the job's only source: nothing else talks to Redis while
-- the batch runs, so the server's read count is this connection's.
local JOB = [[
local ember = require "ember"
local redis = require "ember.redis"
local job = ember.job { name = "pipe", batch_interval = "200ms" }

local function reads(info)
    return tonumber(info:match("total_reads_processed:(%d+)"))
end

local function show(v)
    if redis.is_error(v) then
        return "error " .. v.err:match("^%u+")
    elseif v == redis.null then
        return "null"
    elseif type(v) == "table" then
        local out = {}
        for i, x in ipairs(v) do out[i] = tostring(x) end
        return "array " .. table.concat(out, ",")
    end
    return type(v) .. " " .. tostring(v)
end

job:generator { kind = "sequence", count = 1, rate = 0 }
   :foreach_batch(function(records)
       if #records == 0 then return end
       local r = assert(ember.redis({{url}}))
       local p = r:pipeline()
       p:call("INFO", "stats")
       p:call("SET", "p:a", 1)
       p:call("INCRBY", "p:a", 41)
       p:call{ "HSET", "p:h", "seen_count", 7 }
       p:call("HGET", "p:h", "seen_count")
       p:call("GET", "p:missing")
       p:call("LPUSH", "p:a", "x")                 -- WRONGTYPE: p:a is a string
       p:call("LRANGE", "p:l", 0, -1)
       p:call("HINCRBY", "p:h", "seen_count", 3)
       p:call("INFO", "stats")
       local queued = p:count()
       local replies, err, at = p:exec()
       io.write("queued ", queued, " replies ", #replies, "\n")
       for i = 2, #replies - 1 do io.write(show(replies[i]), "\n") end
       io.write("first error ", tostring(at), " ", err:match("^%u+"), "\n")
       io.write("pipelined reads ", reads(replies[#replies]) - reads(replies[1]), "\n")
       -- the same through r:call: one round trip each
       local before = reads(assert(r:call("INFO", "stats")))
       for _ = 1, 5 do assert(r:call("PING")) end
       io.write("called reads ", reads(assert(r:call("INFO", "stats"))) - before, "\n")
       -- the pipeline is empty after exec, and usable again
       local again = assert(r:pipeline():call("HGET", "p:h", "seen_count"):call("PING"):exec())
       io.write("again ", again[1], " ", again[2], "\n")
       local empty = p:exec()
       io.write("empty ", #empty, "\n")
       -- a bad argument is the caller's error, raised at call
       local ok, why = pcall(function() p:call("SET", "k", {}) end)
       io.write("bad ", tostring(ok), " ", why:match("argument 3 is a table") or why, "\n")
       io.write("DONE\n")
       io.flush()
   end)

return job
]]

-- A pipeline on a server that went away: nil, err, and the job goes on.
local DOWN_JOB = [[
local ember = require "ember"
local job = ember.job { name = "down", batch_interval = "200ms" }

job:generator { kind = "sequence", count = 1, rate = 0 }
   :foreach_batch(function(records)
       if #records == 0 then return end
       local r, err = ember.redis({{url}})
       if r then
           local replies
           replies, err = r:pipeline():call("PING"):call("PING"):exec()
           io.write("replies ", tostring(replies), "\n")
       end
       io.write("err ", tostring(err), "\n")
       io.write("DONE\n")
       io.flush()
   end)

return job
]]

describe("ember.redis pipeline", function()
    local srv, d

    before_each(function()
        srv = redis_server.start()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
        srv:stop()
    end)

    local function wait_done()
        d:wait_until(function() return d:stdout():find("DONE", 1, true) ~= nil end, 20, 0.05,
                     "the job's batch")
    end

    it("sends the queued commands in one round trip and returns every reply in order, "
       .. "error replies in their slot", function()
        srv:cli("RPUSH", "p:l", "one", "two")
        d:write_job("pipe", render(JOB, { url = q(srv.url) }))
        d:start { conf = CONF }
        wait_done()
        local out = driver.lines(d:stdout())
        assert.same({
            "queued 10 replies 10",
            "string OK",
            "number 42",
            "number 1",
            "string 7",
            "null",
            "error WRONGTYPE",
            "array one,two",
            "number 10",
            "first error 7 WRONGTYPE",
            "pipelined reads 0",
            "called reads 6",
            "again 10 PONG",
            "empty 0",
            "bad false argument 3 is a table",
            "DONE",
        }, out)
        -- the writes happened, as redis-cli sees them
        assert.equal("10", srv:cli("HGET", "p:h", "seen_count"):gsub("\n$", ""))
        assert.equal("42", srv:cli("GET", "p:a"):gsub("\n$", ""))
    end)

    it("returns nil, err when the connection is lost, and the driver keeps running", function()
        srv:kill()
        d:write_job("down", render(DOWN_JOB, { url = q(srv.url) }))
        d:start { conf = CONF }
        wait_done()
        local out = d:stdout()
        assert.truthy(out:find("err [^\n]*127%.0%.0%.1:" .. srv.port), out)
        assert.falsy(out:find("replies table", 1, true), out)
        assert.truthy(d:running())
    end)
end)
