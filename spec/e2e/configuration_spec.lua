-- End to end: a bad configuration stops ember at start with exit status 2
-- and a message naming the key and the value; `ember check` reports a
-- broken job script as file:line with exit status 1.

local driver = require "support.driver"


local GOOD_JOB = [[
local ember = require "ember"
local job = ember.job { name = "good", batch_interval = "500ms", on_error = "dead_letter" }

job:generator { kind = "sequence", rate = 10 }
   :map(function(n) return n, 1 end)
   :reduce_by_key(function(a, b) return a + b end)
   :print(5)
   :save_as_text_files("out/good")

return job
]]


local function escape(s)
    return (s:gsub("%p", "%%%0"))
end


describe("a bad configuration", function()
    local d

    before_each(function()
        d = driver.new()
        d:write_job("good", GOOD_JOB)
    end)

    after_each(function()
        d:stop()
    end)

    -- Runs `ember run` with the flags; it must exit 2 at once, print one
    -- "ember: ..." message on stderr, and start no job.
    local function refused(args)
        local argv = { "run" }
        for _, a in ipairs(args) do
            argv[#argv + 1] = a
        end
        argv[#argv + 1] = d.jobs_dir
        local code, out, err = d:exec(argv, 5)
        assert.equal(2, code, "exit status of ember " .. table.concat(argv, " ") .. "\n" .. err)
        assert.equal("", out)
        assert.same({}, d:log_lines("started from"))
        return err
    end

    local function assert_message(err, ...)
        assert.truthy(err:find("^ember: "), err)
        for _, part in ipairs({ ... }) do
            assert.truthy(err:find(part, 1, true), "'" .. part .. "' not in: " .. err)
        end
    end

    it("refuses an unknown key and names it", function()
        local err = refused({ "--conf", "streaming.batchIntervall=1s" })
        assert_message(err, "unknown option 'streaming.batchIntervall'")
    end)

    it("refuses a flag that is not key=value", function()
        assert_message(refused({ "--conf", "streaming.batchInterval" }), "streaming.batchInterval",
                       "key=value")
    end)

    it("refuses a bad duration and names the key and the value", function()
        for _, v in ipairs({ "5 parsecs", "10x", "-1s", "fast", "" }) do
            assert_message(refused({ "--conf", "streaming.batchInterval=" .. v }),
                           "streaming.batchInterval", "'" .. v .. "'")
        end
        assert_message(refused({ "--conf", "streaming.blockInterval=2 days" }),
                       "streaming.blockInterval", "'2 days'")
    end)

    it("refuses bad values and names the key and the value", function()
        local cases = {
            { "streaming.concurrentJobs", "0" },
            { "streaming.concurrentJobs", "many" },
            { "streaming.receiver.maxRate", "fast" },
            { "streaming.receiver.maxRate", "-5" },
            { "streaming.stopGracefullyOnShutdown", "maybe" },
            { "streaming.ui.retainedBatches", "0" },
            { "log.level", "loud" },
            { "log.rolling.strategy", "sometimes" },
        }
        for _, c in ipairs(cases) do
            assert_message(refused({ "--conf", c[1] .. "=" .. c[2] }), c[1], "'" .. c[2] .. "'")
        end
    end)

    it("refuses a batch interval shorter than the block interval", function()
        assert_message(refused({ "--conf", "streaming.blockInterval=500ms",
                                 "--conf", "streaming.batchInterval=200ms" }),
                       "streaming.batchInterval", "'200ms'", "streaming.blockInterval")
    end)

    it("refuses a bad --log-level", function()
        assert_message(refused({ "--log-level", "chatty" }), "log.level", "'chatty'")
    end)

    it("names the file and line of a bad key in a configuration file", function()
        local conf = d:path("ember.conf")
        driver.write_file(conf, "# ember.conf\nstreaming.blockInterval = 100ms\n\n"
                                .. "streaming.batchInterval = soon\n")
        local err = refused({ "--config", conf })
        assert_message(err, conf .. ":4:", "streaming.batchInterval", "'soon'")

        driver.write_file(conf, "streaming.blockInterval = 100ms\nno equals sign here\n")
        assert_message(refused({ "--config", conf }), conf .. ":2:", "no equals sign here")

        driver.write_file(conf, "streaming.blockInterval = 100ms\nstreaming.bogus = 1\n")
        assert_message(refused({ "--config", conf }), conf .. ":2:", "streaming.bogus")
    end)

    it("lets --conf override the configuration file", function()
        local conf = d:path("ember.conf")
        driver.write_file(conf, "streaming.batchInterval = soon\n")
        -- The file's bad value is refused even when a flag sets the key: the file
        -- is read first, as spark-submit reads spark-defaults.conf.
        assert_message(refused({ "--config", conf, "--conf", "streaming.batchInterval=1s" }),
                       conf .. ":1:")
        driver.write_file(conf, "streaming.concurrentJobs = 1\nstreaming.blockInterval = 100ms\n")
        d:start { args = { "--config", conf }, conf = { ["streaming.concurrentJobs"] = 2 } }
        d:wait_for_log("running 1 jobs from .* with 2 workers, block interval 100 ms", 5)
    end)

    it("names a missing configuration file", function()
        local missing = d:path("nowhere.conf")
        assert_message(refused({ "--config", missing }), missing)
    end)
end)


describe("ember check", function()
    local d

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    local function check(source)
        local path = d:write_job("job", source)
        local code, out, err = d:exec({ "check", path }, 5)
        return code, out, err, path
    end

    it("prints the job, its sources and its outputs, and exits 0", function()
        local code, out, err, path = check(GOOD_JOB)
        assert.equal(0, code, err)
        assert.truthy(out:find(path .. ": job 'good', batch interval 500 ms, on_error dead_letter",
                               1, true), out)
        assert.truthy(out:find("sources:\n  1%. generator{[^\n]*kind=sequence[^\n]*}  %("
                               .. escape(path) .. ":4%)"), out)
        assert.truthy(out:find("outputs:\n  1%. print  %(" .. escape(path) .. ":7%)\n"
                               .. "  2%. save_as_text_files  %(" .. escape(path) .. ":8%)"), out)
    end)

    local broken = {
        { "a syntax error", [[
local ember = require "ember"
local job = ember.job { name = "x"
job:generator {}
]], 3, "'}' expected" },
        { "a misused API", [[
local ember = require "ember"
local job = ember.job { name = "x" }
job:generator { kind = "sequence" }
   :map(42)
   :print()
return job
]], 4, "bad argument #1 to 'map' (function expected, got number)" },
        { "an unknown source option", [[
local ember = require "ember"
local job = ember.job { name = "x" }
job:generator { kind = "sequence", bogus = 1 }:print()
return job
]], 3, "unknown option 'bogus'" },
        { "an error raised by the script", [[
local ember = require "ember"
local job = ember.job { name = "x" }

error("refusing to load")
]], 4, "refusing to load" },
        { "a bad on_error", [[
local ember = require "ember"
local job = ember.job { name = "x", on_error = "ignore" }
]], 2, "on_error" },
        { "reduce_by_key on single values", [[
local ember = require "ember"
local job = ember.job { name = "x" }
job:generator {}
   :reduce_by_key(math.max)
   :print()
return job
]], 4, "reduce_by_key" },
    }

    for _, case in ipairs(broken) do
        it("reports " .. case[1] .. " as file:line and exits 1", function()
            local code, out, err, path = check(case[2])
            assert.equal(1, code)
            assert.equal("", out)
            local line = err:match("^[^\n]*")
            assert.equal(path .. ":" .. case[3] .. ": ", line:sub(1, #path + #tostring(case[3]) + 3),
                         err)
            assert.truthy(line:find(case[4], 1, true), "'" .. case[4] .. "' not in: " .. err)
        end)
    end

    it("reports a job without an output", function()
        local code, _, err, path = check([[
local ember = require "ember"
local job = ember.job { name = "x" }
job:generator {}:map(tostring)
return job
]])
        assert.equal(1, code)
        assert.truthy(err:find(escape(path) .. ":%d+: .*no output"), err)
    end)

    it("reports a missing file", function()
        local missing = d:path("jobs/missing.lua")
        local code, out, err = d:exec({ "check", missing }, 5)
        assert.equal(1, code)
        assert.equal("", out)
        assert.truthy(err:find(missing, 1, true), err)
    end)
end)


describe("the command line", function()
    local d

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    it("prints the version", function()
        local code, out = d:exec({ "version" }, 5)
        assert.equal(0, code)
        assert.truthy(out:find("^ember %d+%.%d+%.%d+"), out)
    end)

    it("lists the commands and every configuration key in --help", function()
        local code, out = d:exec({ "--help" }, 5)
        assert.equal(0, code)
        for _, word in ipairs({ "ember run", "ember check", "--conf", "--config", "--log-level",
                                "streaming.blockInterval", "streaming.batchInterval",
                                "streaming.concurrentJobs", "streaming.receiver.maxRate",
                                "streaming.stopGracefullyOnShutdown",
                                "streaming.ui.retainedBatches", "checkpoint.dir", "log.level",
                                "log.file", "log.rolling.strategy" }) do
            assert.truthy(out:find(word, 1, true), word .. " not in --help")
        end
    end)

    it("refuses an unknown command or option with status 2", function()
        local code, _, err = d:exec({ "frobnicate" }, 5)
        assert.equal(2, code)
        assert.truthy(err:find("frobnicate", 1, true), err)
        code, _, err = d:exec({ "run", "--bogus", d.jobs_dir }, 5)
        assert.equal(2, code)
        assert.truthy(err:find("--bogus", 1, true), err)
    end)

    it("stops with an error when the jobs folder cannot be read", function()
        local missing = d:path("no-such-folder")
        local code, _, err = d:exec({ "run", "--conf", "checkpoint.dir=" .. d.checkpoint_dir,
                                      missing }, 5)
        assert.is_true(code ~= 0)
        assert.truthy(err:find(missing, 1, true), err)
    end)
end)
