-- jobs/ysb.lua, the Yahoo Streaming Benchmark job, end to end: events of
-- bench/ysb/gen.lua through librdkafka's mock cluster (kcat produces), the
-- ad -> campaign table and the output in a real redis-server, and
-- bench/ysb/check.lua (redis-cli) comparing every (campaign, window) count
-- with what was sent, across a kill -9 in the middle.

local driver = require "support.driver"
local kafka_mock = require "support.kafka_mock"
local redis_server = require "support.redis_server"

local root = driver.root

-- Runs a shell command: true when it exited 0, and its output.
local function sh(cmd)
    local p = assert(io.popen(cmd .. " 2>&1; echo \"exit $?\""))
    local out = p:read("*a")
    p:close()
    local code = tonumber(out:match("exit (%d+)\n$"))
    return code == 0, out:gsub("exit %d+\n$", "")
end

describe("jobs/ysb.lua", function()
    local mock, srv, d

    setup(function()
        mock = kafka_mock.start { topics = { "ad-events:4" } }
    end)

    teardown(function()
        if mock then
            mock:stop()
        end
    end)

    before_each(function()
        srv = redis_server.start()
    end)

    after_each(function()
        if d then
            d:stop()
        end
        srv:stop()
    end)

    it("counts the views of every campaign in 10 s event-time windows, exactly, into the "
       .. "benchmark's Redis layout, across a kill -9", function()
        d = driver.new()
        local dir = d:path()
        local cli = "redis-cli -h 127.0.0.1 -p " .. srv.port
        local gen = "luajit " .. root .. "/bench/ysb/gen.lua "
        assert(sh(gen .. "setup > " .. dir .. "/setup.redis"))
        assert(sh(cli .. " < " .. dir .. "/setup.redis > /dev/null"))
        assert.equal(1000, srv:num("HLEN", "ad_campaign"))
        assert.equal(100, srv:num("SCARD", "campaigns"))
        -- 30,000 events over 50 s of event time: 5 windows per campaign
        assert(sh(gen .. "events 30000 50000 " .. dir .. "/events.jsonl " .. dir .. "/expected.txt"))
        local lines = driver.lines(driver.read_file(dir .. "/events.jsonl"))
        assert.equal(30000, #lines)
        assert.truthy(lines[1]:match('^{"user_id":"[%x-]+","page_id":"[%x-]+","ad_id":"[%x-]+",'
                                     .. '"ad_type":"[%a-]+","event_type":"%a+","event_time":"%d+",'
                                     .. '"ip_address":"1%.2%.3%.4"}$'), lines[1])
        local first, second = {}, {}
        for i, l in ipairs(lines) do
            if i <= 15000 then first[#first + 1] = l else second[#second + 1] = l end
        end
        driver.write_file(dir .. "/first.jsonl", table.concat(first, "\n") .. "\n")
        driver.write_file(dir .. "/second.jsonl", table.concat(second, "\n") .. "\n")

        d:write_job("ysb", driver.read_file(root .. "/jobs/ysb.lua"))
        local env = { EMBER_KAFKA_BROKERS = mock.bootstrap, EMBER_YSB_REDIS = srv.url,
                      EMBER_YSB_BATCH = "200ms", EMBER_YSB_DELAY = "60s" }
        local conf = driver.conf { ["streaming.blockInterval"] = "100ms" }
        mock:produce_file("ad-events", dir .. "/first.jsonl")
        d:start { conf = conf, env = env }
        d:wait_for_log("assigned ad%-events", 60)
        -- some windows written, then kill -9
        d:wait_until(function()
            return srv:num("SCARD", "windows:" .. srv:cli("SRANDMEMBER", "campaigns"):gsub("\n$", ""))
                   > 0
        end, 60, 0.1, "the first windows in Redis")
        d:signal("KILL")
        assert.equal(128 + 9, d:wait_exit(10))
        mock:produce_file("ad-events", dir .. "/second.jsonl")
        d:start { conf = conf, env = env }
        local out
        d:wait_until(function()
            out = select(2, sh("luajit " .. root .. "/bench/ysb/check.lua " .. dir
                               .. "/expected.txt '" .. cli .. "'"))
            return out:find("exact: yes", 1, true) ~= nil, out
        end, 120, 0.5, "every window exact")
        assert.truthy(out:find("exact: yes (500 windows,", 1, true), out)
        assert.same({}, d:log_lines("late record", { plain = true }))
    end)

    it("is off until its servers are named", function()
        local code, stdout, log = driver.new():exec({ "check", root .. "/jobs/ysb.lua" }, 30)
        local text = stdout .. log
        assert.truthy(text:find("EMBER_KAFKA_BROKERS and EMBER_YSB_REDIS", 1, true), text)
        assert.equal(0, code)
    end)
end)
