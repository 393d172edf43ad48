-- The HTTP API against a running driver: what it reports matches what the
-- jobs did, counted by the spec from the jobs' own output.

local driver = require "support.driver"
local http = require "support.http"
local cjson = require "cjson"


-- count numbers, then the generator is exhausted.
local COUNT_JOB = [[
local ember = require "ember"
local job = ember.job { name = {{name}}, batch_interval = "200ms" }
job:generator { kind = "sequence", rate = {{rate}}, count = {{count}} }
   :save_as_text_files({{out}})
return job
]]

-- Raises on multiples of 10: skipped and counted as failed.
local FAILING_JOB = [[
local ember = require "ember"
local job = ember.job { name = "tens", batch_interval = "200ms", on_error = "skip" }
job:generator { kind = "sequence", rate = 500, count = 200 }
   :map(function(s)
       local n = tonumber(s)
       if n % 10 == 0 then error("no tens: " .. n) end
       return n
   end)
   :save_as_text_files({{out}})
return job
]]


local function by_name(list, name)
    for _, x in ipairs(list) do
        if x.name == name then
            return x
        end
    end
end


describe("the HTTP API", function()
    local d, port

    setup(function()
        d = driver.new()
        d:write_job("alpha.lua", driver.render(COUNT_JOB, {
            name = driver.quote("alpha"), rate = 1000, count = 300,
            out = driver.quote(d:path("out/alpha")) }))
        d:write_job("beta.lua", driver.render(COUNT_JOB, {
            name = driver.quote("beta"), rate = 500, count = 120,
            out = driver.quote(d:path("out/beta")) }))
        d:write_job("tens.lua", driver.render(FAILING_JOB, { out = driver.quote(d:path("out/tens")) }))
        d:write_job("broken.lua", "local ember = require 'ember'\nlocal x = (\n")
        d:start()
        port = d:http_port()
        -- Every record through every output, counted from the files.
        d:wait_until(function()
            local a, b, t = #d:output_lines("out/alpha"), #d:output_lines("out/beta"),
                            #d:output_lines("out/tens")
            return a == 300 and b == 120 and t == 180, a .. " " .. b .. " " .. t
        end, 30, 0.05, "every record in the output files")
    end)

    teardown(function()
        d:stop()
    end)

    -- The API reads snapshots published every 250 ms: wait for one taken
    -- after the last batch.
    local function job_when(name, pred)
        return d:wait_until(function()
            local j = by_name(http.json(port, "/api/v1/jobs"), name)
            return j and pred(j) and j, j and cjson.encode(j)
        end, 10, 0.05, "job " .. name .. " in /api/v1/jobs")
    end

    it("lists the jobs with the records they processed and failed", function()
        local a = job_when("alpha", function(j) return j.numProcessedRecords == 300 end)
        assert.equal("running", a.state)
        assert.equal(300, a.numReceivedRecords)
        assert.equal(0, a.numFailedRecords)
        assert.equal(200, a.batchDuration)
        assert.equal("skip", a.onError)
        assert.equal(d.jobs_dir .. "/alpha.lua", a.script)
        assert.equal(1, #a.sources)
        assert.equal("generator", a.sources[1].kind)
        assert.truthy(a.sources[1].where:find("alpha.lua:3", 1, true), a.sources[1].where)
        assert.equal("save_as_text_files", a.outputs[1].kind)
        assert.truthy(a.version:match("^%x+$"))

        local b = job_when("beta", function(j) return j.numProcessedRecords == 120 end)
        assert.equal(120, b.numReceivedRecords)

        local t = job_when("tens", function(j) return j.numProcessedRecords == 200 end)
        assert.equal(20, t.numFailedRecords)
        assert.truthy(t.lastError:find("no tens", 1, true), t.lastError)
        assert.truthy(t.lastErrorTime)
    end)

    it("lists a script that does not load with its file and line", function()
        local jobs = http.json(port, "/api/v1/jobs")
        local broken = by_name(jobs, "broken")
        assert.is_table(broken)
        assert.equal("load_error", broken.state)
        assert.truthy(broken.lastError:find("broken.lua:3:", 1, true), broken.lastError)
    end)

    it("serves one job, and 404 for a job that does not exist", function()
        job_when("alpha", function(j) return j.numProcessedRecords == 300 end)
        local a = http.json(port, "/api/v1/jobs/alpha")
        assert.equal("alpha", a.name)
        assert.equal(300, a.numProcessedRecords)
        local doc = http.json(port, "/api/v1/jobs/nope", 404)
        assert.truthy(doc.error:find("nope", 1, true))
    end)

    it("serves the retained batches newest first, adding up to the records", function()
        job_when("alpha", function(j) return j.numProcessedRecords == 300 end)
        local batches = http.json(port, "/api/v1/jobs/alpha/batches")
        local sum = 0
        for i, b in ipairs(batches) do
            sum = sum + b.inputSize
            assert.equal("COMPLETED", b.status)
            assert.equal(200, b.batchDuration)
            assert.is_true(b.schedulingDelay >= 0 and b.processingTime >= 0)
            assert.is_true(b.totalDelay >= b.processingTime)
            assert.equal(0, b.retries)
            if i > 1 then
                assert.is_true(b.batchId < batches[i - 1].batchId)
            end
        end
        assert.equal(300, sum)
        -- One batch by its time, as batchId gives it.
        local some
        for _, b in ipairs(batches) do
            if b.inputSize > 0 then
                some = b
                break
            end
        end
        local one = http.json(port, "/api/v1/jobs/alpha/batches/" .. some.batchId)
        assert.same(some, one)
        http.json(port, "/api/v1/jobs/alpha/batches/12345", 404)
        http.json(port, "/api/v1/jobs/alpha/batches/soon", 400)
        -- The failed records of a batch are counted with it.
        local failed = 0
        for _, b in ipairs(http.json(port, "/api/v1/jobs/tens/batches")) do
            failed = failed + b.numFailedRecords
        end
        assert.equal(20, failed)
    end)

    it("serves the receivers with their records, inactive once the source is exhausted", function()
        local rx = d:wait_until(function()
            local list = http.json(port, "/api/v1/receivers")
            for _, r in ipairs(list) do
                if r.job == "alpha" and r.numRecords == 300 and not r.isActive then
                    return r
                end
            end
            return false, cjson.encode(list)
        end, 10, 0.05, "alpha's receiver done")
        assert.equal(1, rx.streamId)
        assert.equal("generator", rx.kind)
        assert.equal("alpha/1 generator", rx.streamName)
        assert.is_true(rx.numBytes > 0)
        assert.equal(cjson.null, rx.lastErrorMessage)
        assert.is_false(rx.failing)
    end)

    it("serves Spark's streaming statistics over every job", function()
        local s = d:wait_until(function()
            local s = http.json(port, "/api/v1/statistics")
            return s.numProcessedRecords == 620 and s, cjson.encode(s)
        end, 10, 0.05, "statistics of every record")
        assert.equal(3, s.numJobs)
        assert.equal(3, s.numReceivers)
        assert.equal(620, s.numReceivedRecords)
        assert.equal(200, s.batchDuration)
        assert.is_true(s.numTotalCompletedBatches >= 3)
        assert.is_true(s.avgProcessingTime >= 0)
        assert.truthy(s.startTime:match("^%d%d%d%d%-%d%d%-%d%dT"))
    end)

    it("serves /metrics that promtool accepts, with the jobs' counts", function()
        job_when("alpha", function(j) return j.numProcessedRecords == 300 end)
        local code, body, headers = http.request(port, "GET", "/metrics")
        assert.equal(200, code)
        assert.truthy(headers["content-type"]:find("text/plain", 1, true))
        local path = d:path("metrics.txt")
        driver.write_file(path, body)
        local p = io.popen("promtool check metrics < " .. path .. " 2>&1; echo rc=$?")
        local out = p:read("*a")
        p:close()
        assert.truthy(out:find("rc=0", 1, true), out)
        assert.truthy(body:find('ember_job_records_total{job="alpha"} 300\n', 1, true))
        assert.truthy(body:find('ember_job_failed_records_total{job="tens"} 20\n', 1, true))
        assert.truthy(body:find('ember_receiver_records_total{job="beta",source="1",kind="generator"} 120\n',
                                1, true))
        local batches = tonumber(body:match('ember_job_batches_total{job="alpha"} (%d+)'))
        assert.equal(batches, tonumber(body:match('ember_batch_processing_seconds_count{job="alpha"} (%d+)')))
        assert.equal(batches, tonumber(body:match('ember_batch_total_delay_seconds_bucket{job="alpha",le="%+Inf"} (%d+)')))
    end)

    it("answers an unknown path with 404 and a JSON error", function()
        local code, body = http.request(port, "GET", "/api/v2/everything")
        assert.equal(404, code)
        assert.truthy(cjson.decode(body).error)
    end)
end)
