-- A job's late records and state size in /api/v1/jobs and /metrics: an
-- event-time window job fed over a socket with records whose event time
-- the spec sets, so it knows which ones are late; the figures come from the
-- snapshot the driver publishes after each batch (the HTTP thread never
-- enters the job's Lua state).

local driver = require "support.driver"
local http = require "support.http"
local tcp = require "support.tcp"
local cjson = require "cjson"


-- "key,event time in ms" per line; windows of 1 s per key, no delay.
local WINDOW_JOB = [[
local ember = require "ember"
local job = ember.job { name = "windows", batch_interval = "200ms" }
job:socket { host = "127.0.0.1", port = {{port}} }
   :event_time(function(line) return tonumber(line:match(",(%d+)$")) end)
   :with_watermark(0, { idle_timeout = false })
   :map(function(line) return line:match("^([^,]+)"), 1 end)
   :event_window { size = "1s", name = "per_key" }
   :count()
   :foreach_batch(function(windows) end)
return job
]]

local PLAIN_JOB = [[
local ember = require "ember"
local job = ember.job { name = "plain", batch_interval = "200ms" }
job:generator { kind = "sequence", rate = 100, count = 20 }
   :foreach_batch(function(records) end)
return job
]]

local LATE = 7
local KEYS = 30


local function metric(body, name, job)
    local v = body:match("\n" .. name .. '{job="' .. job .. '"} (%S+)\n')
    return v and tonumber(v)
end


describe("late records and state size", function()
    local d, srv, port

    setup(function()
        d = driver.new()
        srv = d:own(tcp.server())
        d:write_job("windows.lua", driver.render(WINDOW_JOB, { port = srv.port }))
        d:write_job("plain.lua", PLAIN_JOB)
        d:start()
        port = d:http_port()
        srv:accept(20)
    end)

    teardown(function()
        d:stop()
    end)

    local function job(name)
        return http.json(port, "/api/v1/jobs/" .. name)
    end

    -- Waits until the job processed n records and a batch after them
    -- committed (the watermark they move is the next batch's).
    local function processed(n)
        local j = d:wait_until(function()
            local j = job("windows")
            return j.numProcessedRecords == n and j, cjson.encode(j)
        end, 30, 0.05, n .. " records processed")
        local batches = j.numTotalCompletedBatches
        return d:wait_until(function()
            local k = job("windows")
            return k.numTotalCompletedBatches >= batches + 2 and k, cjson.encode(k)
        end, 30, 0.05, "two more batches")
    end

    it("counts the records that arrive after their window closed, and the state growing with keys", function()
        local first = d:wait_until(function()
            local j = job("windows")
            return j.numTotalCompletedBatches > 0 and j.stateSize ~= cjson.null and j, cjson.encode(j)
        end, 30, 0.05, "a first batch with a state size")
        assert.equal(0, first.lateRecords)

        srv:send_lines({ "a,100000" })            -- the watermark moves to 100 s
        local one = processed(1)
        assert.equal(0, one.lateRecords)
        assert.is_true(one.stateSize > 0, cjson.encode(one))

        local lines = {}
        for i = 1, KEYS do                        -- open window [100 s, 101 s), new keys
            lines[i] = "k" .. i .. ",100500"
        end
        srv:send_lines(lines)
        local wide = processed(1 + KEYS)
        assert.equal(0, wide.lateRecords)
        assert.is_true(wide.stateSize > one.stateSize, one.stateSize .. " then " .. wide.stateSize)

        lines = {}
        for i = 1, LATE do                        -- window [50 s, 51 s) closed long ago
            lines[i] = "late" .. i .. ",50000"
        end
        srv:send_lines(lines)
        local after = processed(1 + KEYS + LATE)
        assert.equal(LATE, after.lateRecords)
        assert.equal(0, after.numFailedRecords)

        local _, status = http.request(port, "GET", "/api/v1/status")  -- what `ember status` prints
        assert.truthy(status:find("  state: " .. after.stateSize .. " bytes, " .. LATE .. " late records\n", 1, true), status)
        local code, body = http.request(port, "GET", "/metrics")
        assert.equal(200, code)
        assert.equal(LATE, metric(body, "ember_job_late_records_total", "windows"))
        local bytes = metric(body, "ember_job_state_bytes", "windows")
        assert.is_true(bytes ~= nil and bytes > 0, body)
        local path = d:path("metrics.txt")
        driver.write_file(path, body)
        local p = io.popen("promtool check metrics < " .. path .. " 2>&1; echo rc=$?")
        local out = p:read("*a")
        p:close()
        assert.truthy(out:find("rc=0", 1, true), out)
    end)

    it("shows null and no samples for a job without event time or state", function()
        local j = d:wait_until(function()
            local j = job("plain")
            return j.numProcessedRecords == 20 and j, cjson.encode(j)
        end, 30, 0.05, "the plain job's records")
        assert.equal(cjson.null, j.lateRecords)
        assert.equal(cjson.null, j.stateSize)
        local _, body = http.request(port, "GET", "/metrics")
        assert.is_nil(metric(body, "ember_job_late_records_total", "plain"))
        assert.is_nil(metric(body, "ember_job_state_bytes", "plain"))
        assert.truthy(body:find('ember_job_records_total{job="plain"} 20\n', 1, true))
    end)
end)
