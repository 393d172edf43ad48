-- Each broker's connector is a module loaded the first time a job names it
-- (core/connectors.c): a driver whose jobs use no broker maps no broker's
-- client library, and a module that will not load fails only the jobs that
-- need it, with a message naming it. No broker needed: loading a module
-- does not connect.

local driver = require "support.driver"


local FILE_JOB = [[
local ember = require "ember"
local job = ember.job { name = "plain", batch_interval = "200ms" }
job:generator { kind = "sequence", rate = 50 }
   :save_as_text_files("out/plain")
return job
]]

local KAFKA_JOB = [[
local ember = require "ember"
local job = ember.job { name = "fromkafka", batch_interval = "200ms" }
job:kafka { brokers = "127.0.0.1:1", topic = "nowhere", group = "g" }
   :print()
return job
]]

local REDIS_SINK_JOB = [[
local ember = require "ember"
local job = ember.job { name = "toredis", batch_interval = "200ms" }
job:generator { kind = "sequence", rate = 50 }
   :to_redis { url = "redis://127.0.0.1:1", command = function(v) return "SET", "k", v end }
return job
]]

local BROKER_LIBS = { "librdkafka", "libhiredis", "librabbitmq", "ember%-kafka", "ember%-redis",
                      "ember%-rabbitmq" }


local function mapped(pid)
    local f = assert(io.open("/proc/" .. pid .. "/maps"))
    local maps = f:read("*a")
    f:close()
    local found = {}
    for _, lib in ipairs(BROKER_LIBS) do
        if maps:find(lib) then
            found[#found + 1] = (lib:gsub("%%", ""))
        end
    end
    table.sort(found)
    return found
end


describe("connector modules", function()
    local d

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    it("a driver with no broker job maps no broker library", function()
        d:write_job("plain", FILE_JOB)
        local pid = d:start()
        d:wait_for_log("%[plain%] started from", 30)
        d:wait_until(function() return #d:output_lines("out/plain") > 0 end, 30, 0.05,
                     "the file job's output")
        assert.same({}, mapped(pid))
    end)

    it("loads a broker's module when a source or a sink names it", function()
        d:write_job("fromkafka", KAFKA_JOB)
        d:write_job("toredis", REDIS_SINK_JOB)
        local pid = d:start()
        d:wait_for_log("%[fromkafka%] started from", 30)
        d:wait_for_log("%[toredis%] started from", 30)
        assert.same({ "ember-kafka", "ember-redis", "libhiredis", "librdkafka" }, mapped(pid))
    end)

    it("a module that will not load fails only the jobs that need it", function()
        local empty = d:path("no-modules")
        assert(os.execute("mkdir -p '" .. empty .. "'"))
        d:write_job("plain", FILE_JOB)
        d:write_job("fromkafka", KAFKA_JOB)
        d:write_job("toredis", REDIS_SINK_JOB)
        d:start { env = { EMBER_MODULE_DIR = empty } }
        local line = d:wait_for_log("the kafka connector's module would not load", 30)
        assert.truthy(line:find("fromkafka.lua:3", 1, true), line)
        assert.truthy(line:find(empty .. "/ember-kafka.so", 1, true), line)
        line = d:wait_for_log("the redis connector's module would not load", 30)
        assert.truthy(line:find("toredis.lua", 1, true), line)
        d:wait_until(function() return #d:output_lines("out/plain") >= 3 end, 30, 0.05,
                     "the file job's output")
        assert.same({}, d:log_lines("%[fromkafka%] started from"))
        assert.same({}, d:log_lines("%[toredis%] started from"))
    end)
end)
