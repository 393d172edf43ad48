-- Isolation: a configuration file that is not text, or a value that does
-- not fit, is refused at start with an error naming the file, line and
-- key; the budget keys are checked like every other.

local driver = require "support.driver"

describe("configuration", function()
    local d

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    local function run_with_file(content)
        local path = d:path("ember.conf")
        local f = assert(io.open(path, "wb"))
        f:write(content)
        f:close()
        return d:exec({ "run", "--config", path, d.jobs_dir }, 30)
    end

    it("refuses a NUL byte in ember.conf, naming the line", function()
        local code, _, err = run_with_file("streaming.blockInterval = 100ms\nstreaming.batchInterval = 1s\0junk\n")
        assert.equal(2, code)
        assert.equal("ember: " .. d:path("ember.conf") .. ":2: a NUL byte; the configuration is text\n", err)
    end)

    it("reads lines longer than 4 KiB whole instead of cutting them", function()
        local code, _, err = run_with_file("# " .. string.rep("x", 5000) .. "\nno.such.key = 1\n")
        assert.equal(2, code)
        assert.truthy(err:find(":2: unknown option 'no.such.key'", 1, true), err)
    end)

    local too_large = {
        { "streaming.stopTimeout", "99999999999999s", "at most 1000000000s, about 31 years" },
        { "streaming.job.batchTimeout", "1e300ms", "at most 1000000000s, about 31 years" },
        { "memory.max", "1e30", "at most 4 exabytes" },
        { "streaming.job.memory", "99999999999g", "at most 4 exabytes" },
        { "streaming.concurrentJobs", "99999999999999999999999", "at most 9223372036854775807" },
    }
    for _, case in ipairs(too_large) do
        it("says " .. case[1] .. " = " .. case[2] .. " is too large", function()
            local code, _, err = d:exec({ "run", "--conf", case[1] .. "=" .. case[2], d.jobs_dir }, 30)
            assert.equal(2, code)
            assert.equal("ember: --conf: option '" .. case[1] .. "' = '" .. case[2]
                         .. "' is too large (" .. case[3] .. ")\n", err)
        end)
    end

    it("refuses a budget key that is not a value of its type", function()
        local code, _, err = d:exec({ "run", "--conf", "streaming.job.memory=lots", d.jobs_dir }, 30)
        assert.equal(2, code)
        assert.truthy(err:find("option 'streaming.job.memory' = 'lots' is not a size", 1, true), err)
    end)
end)
