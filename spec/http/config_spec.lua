-- The configuration around the API: a Spark submission taken line by line,
-- SIGHUP re-reading ember.conf, and the per-job summary line at info level.

local driver = require "support.driver"
local http = require "support.http"


local GEN_JOB = [[
local ember = require "ember"
local job = ember.job { name = "gen", batch_interval = {{interval}} }
job:generator { kind = "sequence", rate = 100, count = {{count}} }
   :save_as_text_files({{out}})
return job
]]


describe("configuration", function()
    local d

    before_each(function()
        d = driver.new()
        d:write_job("gen.lua", driver.render(GEN_JOB, { count = 0, interval = '"200ms"',
                                                        out = driver.quote(d:path("out/gen")) }))
    end)

    after_each(function()
        d:stop()
    end)

    it("takes the Spark Streaming submission of the issue line by line", function()
        local args = {}
        for _, kv in ipairs({ "spark.streaming.blockInterval=500", "spark.streaming.concurrentJobs=6",
                              "spark.cleaner.ttl=1800", "spark.executor.logs.rolling.strategy=time",
                              "spark.executor.logs.rolling.time.interval=daily",
                              "spark.executor.logs.rolling.maxRetainedFiles=10",
                              "spark.streaming.receiver.maxRate=30",
                              "spark.streaming.batchInterval=1s" }) do
            args[#args + 1] = "--conf"
            args[#args + 1] = kv
        end
        for _, a in ipairs({ "--executor-memory", "1536m", "--total-executor-cores", "6", "--supervise" }) do
            args[#args + 1] = a
        end
        -- blockInterval 500 ms: the job's interval must be at least that
        d:write_job("gen.lua", driver.render(GEN_JOB, { count = 0, interval = '"1s"',
                                                        out = driver.quote(d:path("out/gen")) }))
        d:start { conf = {}, args = args }
        local port = d:http_port()
        d:wait_for_log("started from", 10)
        local log = d:log()
        assert.truthy(log:find("spark.cleaner.ttl = 1800 accepted and ignored: ember bounds memory by "
                               .. "construction", 1, true), log)
        assert.truthy(log:find("spark.executor.logs.rolling.strategy is log.rolling.strategy here", 1, true))
        assert.truthy(log:find("--executor-memory 1536m: memory.max = 1536m", 1, true))
        assert.truthy(log:find("--supervise: run.supervise = true", 1, true))
        local s = http.json(port, "/api/v1/statistics")
        assert.equal(1536 * 1024 * 1024, s.memoryMax)
        local rx = http.json(port, "/api/v1/receivers")[1]
        assert.equal(30, rx.maxRate)
        assert.truthy(log:find("with 6 workers, block interval 500 ms", 1, true), log)

        -- A key with no counterpart at all is still an error.
        d:signal("TERM")
        d:wait_exit(20)
        local code, _, err = d:exec({ "run", "--conf", "checkpoint.dir=" .. d.checkpoint_dir,
                                      "--conf", "spark.streaming.kafka.maxRatePerPartition=10",
                                      d.jobs_dir }, 10)
        assert.equal(2, code)
        assert.truthy(err:find("streaming.kafka.maxRatePerPartition", 1, true), err)
    end)

    it("re-reads ember.conf on SIGHUP and says which keys changed and which need a restart", function()
        local conf = d:path("ember.conf")
        driver.write_file(conf, "log.level = info\nstreaming.maxWaitingBatches = 10\n")
        d:start { conf = driver.conf(), log_level = false, args = { "--config", conf } }
        d:wait_for_log("started from", 10)
        driver.write_file(conf, "log.level = debug\nstreaming.maxWaitingBatches = 20\n")
        local mark = d:log_mark()
        d:signal("HUP")
        d:wait_for_log("configuration: log.level changed from 'info' to 'debug': in effect now", 10,
                       { from = mark, plain = true })
        d:wait_for_log("configuration: streaming.maxWaitingBatches changed from '10' to '20': needs a "
                       .. "restart", 10, { from = mark, plain = true })
        -- debug is in effect: per-batch lines appear.
        d:wait_for_log("%[gen%] batch %d+:", 10, { from = mark })
        -- A broken file is refused and the running configuration stays.
        driver.write_file(conf, "log.level = loud\n")
        mark = d:log_mark()
        d:signal("HUP")
        d:wait_for_log("configuration not reloaded: .*log.level", 10, { from = mark })
        assert.is_true(d:running())
    end)

    it("logs one summary line per job every log.batchSummaryInterval at info level", function()
        d:write_job("gen.lua", driver.render(GEN_JOB, { count = 150, interval = '"200ms"',
                                                        out = driver.quote(d:path("out/gen")) }))
        d:start { conf = driver.conf { ["log.batchSummaryInterval"] = "1s" }, log_level = "info" }
        d:wait_until(function() return #d:output_lines("out/gen") == 150 end, 20, 0.05, "150 records")
        -- The lines add up to every record, and none is a per-batch debug line.
        local total = d:wait_until(function()
            local n = 0
            for _, line in ipairs(d:log_lines("%[gen%] %d+ batches, %d+ records")) do
                n = n + tonumber(line:match("batches, (%d+) records"))
            end
            return n == 150 and n, n
        end, 20, 0.1, "summary lines adding up to 150 records")
        assert.equal(150, total)
        assert.same({}, d:log_lines("%[gen%] batch %d+:"))
    end)
end)
