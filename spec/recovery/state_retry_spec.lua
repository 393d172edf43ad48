-- Keyed state and retries: a batch whose sink refuses is run again, and a
-- run that failed leaves no trace in the state. The Kafka mock refuses the
-- next Produce requests (its own error injection), so the job's to_kafka
-- output fails the batch a few times before it lands; the counts per key
-- must still be exactly those of the records produced.

local driver = require "support.driver"
local kafka_mock = require "support.kafka_mock"

local str_format = string.format


local JOB = [[
local ember = require "ember"
local job = ember.job { name = "retry_tally", batch_interval = "200ms" }
local dir = {{dir}}

local records = job:kafka { brokers = {{b}}, topic = "rt_in", group = "rt", start = "earliest",
                            {{client}} }

records:to_kafka { brokers = {{b}}, topic = "rt_out" }

records:map(function(v) return "k" .. (tonumber(v:match("%d+")) % 11), 1 end)
       :update_state_by_key(function(values, count) return (count or 0) + #values end)
       :foreach_batch(function(counts, info)
           local t = {}
           for i, p in ipairs(counts) do
               t[i] = p[1] .. " " .. p[2]
           end
           local f = assert(io.open(dir .. "/state.tmp", "w"))
           f:write(table.concat(t, "\n"), "\n")
           f:close()
           assert(os.rename(dir .. "/state.tmp", dir .. "/state.txt"))
       end)

return job
]]


describe("keyed state with a sink that refuses", function()
    local mock, d

    setup(function()
        mock = kafka_mock.start { topics = { "rt_in:2", "rt_out:1" } }
    end)

    teardown(function()
        if mock then
            mock:stop()
        end
    end)

    after_each(function()
        if d then
            d:stop()
        end
    end)

    it("counts each record once when its batch fails and runs again", function()
        d = driver.new()
        d:write_job("retry_tally", driver.render(JOB, {
            dir = driver.quote(d:path()), b = driver.quote(mock.bootstrap),
            client = kafka_mock.CLIENT,
        }))
        local produced = {}
        for i = 1, 500 do
            produced[i] = str_format("r%05d", i)
        end
        mock:produce("rt_in", produced)
        -- Refuse the next three Produce requests (the records are in
        -- already): the batch holding them fails, runs again, and lands on a
        -- later run.
        mock:command("errors 0 29 3")
        d:start {}
        d:wait_for_log("retry 1 of", 60)
        local want = {}
        for _, v in ipairs(produced) do
            local k = "k" .. (tonumber(v:match("%d+")) % 11)
            want[k] = (want[k] or 0) + 1
        end
        d:wait_until(function()
            local missing = kafka_mock.diff(produced, mock:values("rt_out"))
            return #missing == 0, #missing .. " records not on rt_out"
        end, 60, 0.2, "every record on rt_out")
        d:signal("TERM")
        assert.equal(0, d:wait_exit(20))
        local got = {}
        for k, n in (driver.read_file(d:path("state.txt")) or ""):gmatch("(%S+) (%d+)\n") do
            got[k] = tonumber(n)
        end
        assert.same(want, got)
    end)
end)
