-- What an operator sees of a job's reference tables: `ember check` lists
-- them (and names the line of a bad declaration), /api/v1/jobs and
-- /metrics show per table its entries, its last load, its load errors and
-- whether it is stale, through an outage of the table's Redis and back.
-- redis-cli writes the tables; promtool checks the metrics.

local driver = require "support.driver"
local http = require "support.http"
local redis_server = require "support.redis_server"
local cjson = require "cjson"

local render = redis_server.render
local q = driver.quote

local CONF = { ["streaming.blockInterval"] = "100ms", ["streaming.batch.maxRetries"] = "2",
               ["streaming.batch.maxBackoff"] = "1s" }

-- a hash table and a file table, joined with a generated stream
local JOB = [[
local ember = require "ember"
local job = ember.job { name = {{name}}, batch_interval = {{interval}} }

local ads = job:table { name = "ads", from = { redis = {{table_url}}, hash = "ads" },
                        refresh = "300ms" }
local sites = job:table { name = "sites", from = { file = {{file}} } }

job:generator { kind = "sequence", rate = 20 }
   :map(function(n) return tostring(n % 5), n end)
   :join(ads)
   :join(sites)
   :foreach_batch(function() end)
return job
]]


local function metric(body, name, job, tbl)
    local v = body:match("\n" .. name .. '{job="' .. job .. '",table="' .. tbl .. '"} (%S+)\n')
    return v and tonumber(v)
end

local function promtool(d, body)
    local path = d:path("metrics.txt")
    driver.write_file(path, body)
    local p = io.popen("promtool check metrics < " .. path .. " 2>&1; echo rc=$?")
    local out = p:read("*a")
    p:close()
    return out
end


describe("reference tables shown to an operator", function()
    local tsrv, d

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
        if tsrv then
            tsrv:stop()
            tsrv = nil
        end
    end)

    it("are listed by ember check with their name and source, and a bad from is an error "
       .. "naming file:line", function()
        local path = d:path("jobs/tables.lua")
        driver.write_file(path, render(JOB, { name = q("tables"), interval = q("200ms"),
                                             table_url = q("redis://:secret@127.0.0.1:6390"),
                                             file = q("/tmp/sites.tsv") }))
        local code, out, err = d:exec({ "check", path }, 20)
        assert.equal(0, code, err)
        assert.truthy(out:find("tables:\n  1. 'ads': Redis hash 'ads' at redis://127.0.0.1:6390  ("
                               .. path .. ":4)\n  2. 'sites': file /tmp/sites.tsv  (" .. path
                               .. ":6)\n", 1, true), out)
        assert.falsy(out:find("secret", 1, true), out)

        local cases = {
            { 'from = { redis = "redis://127.0.0.1:6390", hsh = "ads" }',
              "bad option 'from.hsh' to 'table' (a Redis source takes redis, hash or pattern)" },
            { 'from = "redis://127.0.0.1:6390"', "bad option 'from' to 'table' (a source such as" },
            { 'from = { kafka = "127.0.0.1:9092" }',
              "bad option 'from' to 'table' (a Kafka source takes topic = \"name\")" },
            { 'from = { nats = "x" }',
              "bad option 'from' to 'table' (one of 'redis', 'file' or 'kafka' expected, got 'nats')" },
            { 'from = { file = "/tmp/x" }, name = "ads"',
              "bad option 'name' to 'table' (job 'bad' has a table 'ads' already, declared at " },
        }
        for _, case in ipairs(cases) do
            local bad = d:path("jobs/bad.lua")
            driver.write_file(bad, 'local ember = require "ember"\n'
                .. 'local job = ember.job { name = "bad" }\n'
                .. 'job:table { name = "ads", from = { file = "/tmp/y" } }\n'
                .. "job:table {\n    " .. case[1] .. " }\n"
                .. 'job:generator { kind = "sequence" }:print()\nreturn job\n')
            local bcode, bout, berr = d:exec({ "check", bad }, 20)
            assert.equal(1, bcode, bout)
            assert.truthy(berr:find(bad .. ":4: " .. case[2], 1, true), berr)
        end
    end)

    it("show in the jobs API and /metrics their entries, last load, load errors and staleness, "
       .. "through an outage of their source", function()
        tsrv = redis_server.start { persist = true }
        tsrv:cli("HSET", "ads", "0", "a", "1", "b", "2", "c")
        local file = d:path("sites.tsv")
        driver.write_file(file, "0\tx\n1\ty\n")
        d:write_job("tables", render(JOB, { name = q("tables"), interval = q("200ms"),
                                            table_url = q(tsrv.url), file = q(file) }))
        -- a second job whose table's Redis is not there: it never loads
        local dead = "redis://127.0.0.1:" .. redis_server.free_port()
        d:write_job("waiting", render(JOB, { name = q("waiting"), interval = q("200ms"),
                                             table_url = q(dead), file = q(file) }))
        -- and one whose first batch is a day away: its tables as declared
        d:write_job("hourly", render(JOB, { name = q("hourly"), interval = q("24h"),
                                            table_url = q(tsrv.url), file = q(file) }))
        d:start { conf = CONF }
        local port = d:http_port()

        local function tables(job, want, what)
            return d:wait_until(function()
                local j = http.json(port, "/api/v1/jobs/" .. job)
                local t = {}
                for _, e in ipairs(j.tables or {}) do
                    t[e.name] = e
                end
                return want(t) and t, cjson.encode(j.tables)
            end, 30, 0.05, what)
        end

        local t = tables("tables", function(t) return t.ads and t.ads.loaded and t.sites end,
                         "the tables loaded")
        assert.same({ name = "ads", kind = "redis_hash", source = "Redis hash 'ads' at " .. tsrv.url,
                      where = d:path("jobs/tables.lua") .. ":4", loaded = true, stale = false,
                      entries = 3, lastLoadTime = t.ads.lastLoadTime, loadErrors = 0,
                      lastError = cjson.null }, t.ads)
        assert.truthy(t.ads.lastLoadTime:match("^%d%d%d%d%-%d%d%-%d%dT"), t.ads.lastLoadTime)
        assert.equal("file", t.sites.kind)
        assert.equal(2, t.sites.entries)
        assert.equal(0, t.sites.loadErrors)

        -- the table that cannot load: not loaded, stale, counting errors
        local w = tables("waiting", function(t) return t.ads and t.ads.loadErrors >= 2 end,
                         "the waiting job's failed loads")
        assert.is_false(w.ads.loaded)
        assert.is_true(w.ads.stale)
        assert.equal(0, w.ads.entries)
        assert.equal(cjson.null, w.ads.lastLoadTime)
        assert.truthy(w.ads.lastError:find(dead, 1, true), w.ads.lastError)

        local h = tables("hourly", function(t) return t.ads and t.sites end, "the hourly job's tables")
        assert.same({ name = "ads", kind = "redis_hash", source = "Redis hash 'ads' at " .. tsrv.url,
                      where = d:path("jobs/hourly.lua") .. ":4", loaded = false, stale = false,
                      entries = 0, lastLoadTime = cjson.null, loadErrors = 0,
                      lastError = cjson.null }, h.ads)

        -- an update is counted once read again
        tsrv:cli("HSET", "ads", "3", "d")
        tables("tables", function(t) return t.ads.entries == 4 end, "4 entries")

        local _, body = http.request(port, "GET", "/metrics")
        assert.equal(4, metric(body, "ember_table_entries", "tables", "ads"))
        assert.equal(2, metric(body, "ember_table_entries", "tables", "sites"))
        assert.equal(0, metric(body, "ember_table_load_errors_total", "tables", "ads"))
        assert.equal(0, metric(body, "ember_table_stale", "tables", "ads"))
        assert.equal(1, metric(body, "ember_table_loaded", "tables", "ads"))
        local at = metric(body, "ember_table_last_load_timestamp_seconds", "tables", "ads")
        assert.is_true(at ~= nil and math.abs(at - os.time()) < 120, tostring(at))
        assert.equal(0, metric(body, "ember_table_loaded", "waiting", "ads"))
        assert.equal(1, metric(body, "ember_table_stale", "waiting", "ads"))
        assert.is_true(metric(body, "ember_table_load_errors_total", "waiting", "ads") >= 2)
        assert.is_nil(metric(body, "ember_table_last_load_timestamp_seconds", "waiting", "ads"))
        assert.equal(0, metric(body, "ember_table_loaded", "hourly", "sites"))
        local out = promtool(d, body)
        assert.truthy(out:find("rc=0", 1, true), out)

        -- the table's Redis goes: stale, its entries kept, the error counted and shown
        tsrv:shutdown()
        t = tables("tables", function(t) return t.ads.stale and t.ads.loadErrors >= 1 end,
                   "the table stale")
        assert.equal(4, t.ads.entries)
        assert.is_true(t.ads.loaded)
        assert.truthy(t.ads.lastError:find(tsrv.url, 1, true), t.ads.lastError)
        assert.is_false(t.sites.stale)
        local errors = t.ads.loadErrors
        local _, status = http.request(port, "GET", "/api/v1/status")
        assert.truthy(status:find("  table ads: 4 entries, stale, %d+ load errors; last: "), status)
        _, body = http.request(port, "GET", "/metrics")
        assert.equal(1, metric(body, "ember_table_stale", "tables", "ads"))
        assert.is_true(metric(body, "ember_table_load_errors_total", "tables", "ads") >= errors)
        assert.equal(4, metric(body, "ember_table_entries", "tables", "ads"))

        -- back: fresh again, read again, the errors stay counted
        local before = t.ads.lastLoadTime
        tsrv:spawn()
        tsrv:cli("HDEL", "ads", "0")
        t = tables("tables", function(t) return not t.ads.stale and t.ads.entries == 3 end,
                   "the table read again")
        assert.is_true(t.ads.loadErrors >= errors)
        assert.is_true(t.ads.lastLoadTime > before, before .. " then " .. t.ads.lastLoadTime)
        assert.truthy(d:log():find("table 'ads' .*: its source can be read again"), d:log_tail())
    end)
end)
