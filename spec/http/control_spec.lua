-- Control calls (POST) and the command line that uses them: they do what
-- they say, run on the main thread, and need the token when one is set.

local driver = require "support.driver"
local http = require "support.http"
local cjson = require "cjson"


local GEN_JOB = [[
local ember = require "ember"
local job = ember.job { name = {{name}}, batch_interval = "200ms" }
job:generator { kind = "sequence", rate = 200 }
   :save_as_text_files({{out}})
return job
]]

local TOKEN = "s3cret-token"


local function job_state(port, name)
    return http.json(port, "/api/v1/jobs/" .. name)
end


describe("control calls", function()
    local d, port

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    local function start(conf)
        d:write_job("gen.lua", driver.render(GEN_JOB, {
            name = driver.quote("gen"), out = driver.quote(d:path("out/gen")) }))
        d:start { conf = driver.conf(conf) }
        port = d:http_port()
        d:wait_until(function() return #d:output_lines("out/gen") > 0 end, 20, 0.05, "output")
    end

    -- Waits for the published state to satisfy pred; returns the job.
    local function wait_job(pred, what)
        return d:wait_until(function()
            local j = job_state(port, "gen")
            return pred(j) and j, cjson.encode(j)
        end, 20, 0.05, what)
    end

    it("refuses a POST without the token, or with a wrong one, when ui.token is set", function()
        start { ["ui.token"] = TOKEN }
        local code, doc = http.post(port, "/api/v1/jobs/gen/pause")
        assert.equal(401, code)
        assert.truthy(doc.error:find("Bearer", 1, true))
        code = http.post(port, "/api/v1/jobs/gen/pause", "wrong")
        assert.equal(401, code)
        code = http.post(port, "/api/v1/reload", TOKEN .. "x")
        assert.equal(401, code)
        assert.is_false(job_state(port, "gen").paused)
        -- Reading needs no token.
        assert.equal(200, (http.request(port, "GET", "/api/v1/jobs")))
        code, doc = http.post(port, "/api/v1/jobs/gen/pause", TOKEN)
        assert.equal(200, code)
        assert.is_true(doc.ok)
        assert.is_true(wait_job(function(j) return j.paused end, "paused").paused)
    end)

    it("pauses a job's receivers and resumes them", function()
        start()
        local code, doc = http.post(port, "/api/v1/jobs/gen/pause")
        assert.equal(200, code, cjson.encode(doc))
        local j = wait_job(function(j) return j.state == "paused" end, "state paused")
        local rx = http.json(port, "/api/v1/receivers")[1]
        assert.is_true(rx.paused)
        assert.equal("paused through the API", rx.pausedReason)
        -- Batches go on, empty: three more complete with no new record.
        local records, batches = j.numReceivedRecords, j.numTotalCompletedBatches
        local later = wait_job(function(x) return x.numTotalCompletedBatches >= batches + 3 end,
                               "three more batches")
        assert.is_true(later.numReceivedRecords <= records + 200 * 0.2 + 1) -- a poll under way
        local held = later.numReceivedRecords
        wait_job(function(x) return x.numTotalCompletedBatches >= later.numTotalCompletedBatches + 3 end,
                 "three more batches")
        assert.equal(held, job_state(port, "gen").numReceivedRecords)

        code = http.post(port, "/api/v1/jobs/gen/resume")
        assert.equal(200, code)
        wait_job(function(x) return x.state == "running" and x.numReceivedRecords > held end,
                 "records again")
    end)

    it("stops a job (its last batch runs) and starts it again", function()
        start()
        local code, doc = http.post(port, "/api/v1/jobs/gen/stop")
        assert.equal(200, code, cjson.encode(doc))
        local j = wait_job(function(x) return x.state == "stopped" and x.waitingBatches == 0 end,
                           "stopped")
        -- Everything received went out.
        d:wait_until(function()
            return #d:output_lines("out/gen") == j.numReceivedRecords, #d:output_lines("out/gen")
        end, 20, 0.05, "every received record written")
        assert.equal(j.numReceivedRecords, job_state(port, "gen").numProcessedRecords)
        code = http.post(port, "/api/v1/jobs/gen/stop")
        assert.equal(409, code)
        code, doc = http.post(port, "/api/v1/jobs/gen/start")
        assert.equal(200, code, cjson.encode(doc))
        wait_job(function(x) return x.state == "running" and x.numReceivedRecords > j.numReceivedRecords end,
                 "running again")
        assert.equal(404, (http.post(port, "/api/v1/jobs/nope/start")))
        assert.equal(404, (http.post(port, "/api/v1/jobs/gen/explode")))
        assert.equal(405, (http.request(port, "DELETE", "/api/v1/jobs/gen")))
        assert.truthy(d:log():find("[gen] stopped through the API", 1, true))
    end)

    it("reloads through POST /api/v1/reload on the main thread", function()
        start()
        d:write_job("second.lua", driver.render(GEN_JOB, {
            name = driver.quote("second"), out = driver.quote(d:path("out/second")) }))
        local code, doc = http.post(port, "/api/v1/reload")
        assert.equal(200, code, cjson.encode(doc))
        d:wait_for_log("reload requested through the API", 10, { plain = true })
        d:wait_until(function() return #d:output_lines("out/second") > 0 end, 20, 0.05, "second job")
        assert.equal("running", job_state(port, "second").state)
    end)

    it("refuses to start on a non-loopback ui.host without a token", function()
        local code, _, err = d:exec({ "run", "--conf", "checkpoint.dir=" .. d.checkpoint_dir,
                                      "--conf", "ui.host=0.0.0.0", "--conf", "ui.port=0",
                                      d.jobs_dir }, 10)
        assert.equal(2, code)
        assert.truthy(err:find("ui.host = '0.0.0.0' is not a loopback address", 1, true), err)
        assert.truthy(err:find("ui.token", 1, true), err)
    end)
end)


describe("the command line", function()
    local d, port

    before_each(function()
        d = driver.new()
        d:write_job("gen.lua", driver.render(GEN_JOB, {
            name = driver.quote("gen"), out = driver.quote(d:path("out/gen")) }))
    end)

    after_each(function()
        d:stop()
    end)

    -- Runs an ember client command next to the running driver.
    local function cli(args)
        local cmd = { driver.bin }
        for _, a in ipairs(args) do
            cmd[#cmd + 1] = "'" .. a .. "'"
        end
        local p = io.popen("cd " .. d:path() .. " && " .. table.concat(cmd, " ") .. " 2>&1; echo rc=$?")
        local out = p:read("*a")
        p:close()
        return tonumber(out:match("rc=(%d+)%s*$")), out
    end

    local function conf_args(extra)
        local a = { "--conf", "checkpoint.dir=" .. d.checkpoint_dir, "--conf", "ui.port=" .. port,
                    "--conf", "ui.token=" .. TOKEN }
        for _, x in ipairs(extra or {}) do
            a[#a + 1] = x
        end
        return a
    end

    local function args(cmd, extra)
        local a = conf_args(extra)
        table.insert(a, 1, cmd)
        return a
    end

    it("status, stop JOB, reload and stop work through the API and the PID file", function()
        d:start { conf = driver.conf { ["ui.token"] = TOKEN } }
        port = d:http_port()
        d:wait_until(function() return #d:output_lines("out/gen") > 0 end, 20, 0.05, "output")
        local pidfile = d.checkpoint_dir .. "/ember.pid"
        assert.equal(tostring(d.pid), (driver.read_file(pidfile) or ""):match("%d+"))

        -- The pid file names the port the server took (ui.port = 0 here), so
        -- status finds the driver without being told the port.
        d:wait_until(function()
            return (driver.read_file(pidfile) or ""):match("^%d+\n(%d+)") == tostring(port)
        end, 10, 0.05, "the port in the pid file")
        local rc, out = cli({ "status", "--conf", "checkpoint.dir=" .. d.checkpoint_dir })
        assert.equal(0, rc, out)
        assert.truthy(out:find("gen%s+running"), out)
        assert.truthy(out:find("gen/1 generator", 1, true), out)

        rc, out = cli(args("stop", { "gen" }))
        assert.equal(0, rc, out)
        d:wait_until(function() return http.json(port, "/api/v1/jobs/gen").state == "stopped" end,
                     20, 0.05, "gen stopped")

        d:write_job("second.lua", driver.render(GEN_JOB, {
            name = driver.quote("second"), out = driver.quote(d:path("out/second")) }))
        rc, out = cli(args("reload"))
        assert.equal(0, rc, out)
        d:wait_until(function() return #d:output_lines("out/second") > 0 end, 20, 0.05, "second job")

        -- Without the API (ui.enabled = false), reload signals the pid in the file.
        local mark = d:log_mark()
        rc, out = cli({ "reload", "--conf", "checkpoint.dir=" .. d.checkpoint_dir, "--conf",
                        "ui.enabled=false" })
        assert.equal(0, rc, out)
        assert.truthy(out:find("sent Hangup to ember (pid " .. d.pid, 1, true), out)
        d:wait_for_log("SIGHUP: reloading", 10, { from = mark, plain = true })

        rc, out = cli(args("stop"))
        assert.equal(0, rc, out)
        assert.equal(0, d:wait_exit(30))
        assert.is_nil(driver.read_file(pidfile))
    end)

    it("refuses a second driver on the same checkpoint.dir", function()
        d:start()
        port = d:http_port()
        local other = driver.new()
        local code, _, err = other:exec({ "run", "--conf", "checkpoint.dir=" .. d.checkpoint_dir,
                                          "--conf", "ui.port=0", other.jobs_dir }, 10)
        other:stop()
        assert.equal(2, code)
        assert.truthy(err:find("is in use by another driver (pid " .. d.pid .. ",", 1, true), err)
    end)

    it("ember config prints every key with where its value came from", function()
        driver.write_file(d:path("ember.conf"), "streaming.batchInterval = 2s\n# a comment\nlog.level = warn\n")
        port = 4040
        local rc, out = cli({ "config", "--conf", "streaming.blockInterval=100ms",
                              "--conf", "spark.executor.logs.rolling.maxRetainedFiles=3",
                              "--conf", "ui.token=hidden" })
        assert.equal(0, rc, out)
        assert.truthy(out:find("streaming.batchInterval%s+2s%s+%(ember.conf:1%)"), out)
        assert.truthy(out:find("log.level%s+warn%s+%(ember.conf:3%)"), out)
        assert.truthy(out:find("streaming.blockInterval%s+100ms%s+%(%-%-conf%)"), out)
        assert.truthy(out:find("log.rolling.maxRetainedFiles%s+3%s+%(%-%-conf%)"), out)
        assert.truthy(out:find("memory.max%s+256m%s+%(default%)"), out)
        assert.truthy(out:find("ui.token%s+%*%*%*"), out)
        assert.is_nil(out:find("hidden", 1, true))
    end)
end)
