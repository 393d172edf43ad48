-- The watermark knows the Kafka assignment: a partition assigned to the job
-- that has not delivered a record yet holds the watermark back until it
-- delivers or stays idle for idle_timeout. librdkafka's mock cluster, kcat
-- to produce.
--
-- The topic has two partitions and the records go to partition 0 only.
-- Were partition 1 unknown to the watermark until its first record, the
-- batch after the records would close the windows before 4 s at once; it
-- must wait for partition 1 to turn idle (idle_timeout 4 s of the job's
-- running time, counted from the first record). Then partition 1 delivers:
-- a record far behind partition 0 holds the watermark at its time again.

local driver = require "support.driver"
local kafka_mock = require "support.kafka_mock"

local str_format = string.format

local JOB = [[
local ember = require "ember"
local job = ember.job { name = "wa", batch_interval = "200ms" }
local dir = {{dir}}

local function append(line)
    local f = assert(io.open(dir .. "/out", "a"))
    f:write(line, "\n")
    f:close()
end

local views = job:kafka { {{options}} }
  :event_time(function(v) return tonumber(v:match("^t(%d+)")) end)
  :with_watermark(0, { idle_timeout = "4s" })

views:foreach_batch(function(records, info)
    if #records > 0 then append("in " .. info.time .. " " .. #records) end
end)

views:map(function(v) return "all", 1 end)
  :event_window { size = "1s" }
  :count()
  :foreach_batch(function(windows, info)
      for _, p in ipairs(windows) do
          append("win " .. info.time .. " " .. p[2].start .. " " .. p[2].value)
      end
  end)

return job
]]

describe("the watermark and the Kafka assignment", function()
    local mock, d

    setup(function()
        mock = kafka_mock.start { topics = { "wa_in:2" } }
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

    -- { ins = { {time, n} }, wins = { [start] = { time =, n = } } }
    local function output()
        local ins, wins = {}, {}
        for line in (driver.read_file(d:path("out")) or ""):gmatch("([^\n]*)\n") do
            local t, n = line:match("^in (%d+) (%d+)$")
            if t then
                ins[#ins + 1] = { tonumber(t), tonumber(n) }
            end
            local wt, start, c = line:match("^win (%d+) (%d+) (%d+)$")
            if wt then
                wins[tonumber(start)] = { time = tonumber(wt), n = tonumber(c) }
            end
        end
        return ins, wins
    end

    it("holds the watermark back for a partition assigned but not seen, until it is idle, "
       .. "and for a partition behind once it delivers", function()
        -- partition 0: t100, t200, ... t4900 (event times in ms): 10 a second
        local p0 = {}
        for i = 1, 49 do
            p0[i] = str_format("t%d", i * 100)
        end
        d = driver.new()
        d:write_job("wa", driver.render(JOB, {
            dir = driver.quote(d:path()),
            options = "brokers = " .. driver.quote(mock.bootstrap) .. ', topic = "wa_in", '
                      .. 'group = "wa", start = "earliest", ' .. kafka_mock.CLIENT,
        }))
        d:start { conf = driver.conf() }
        d:wait_for_log("assigned wa_in%[0,1%]", 60)
        mock:produce("wa_in", p0, { partition = 0 })
        local ins, wins
        d:wait_until(function()
            ins, wins = output()
            return wins[0] ~= nil, #ins .. " batches of records in, no window out"
        end, 60, 0.05, "the first window")
        local got = 0
        for _, b in ipairs(ins) do
            got = got + b[2]
        end
        assert.equal(49, got)
        local first_in = ins[1][1]
        -- partition 1 held it: the first window closed only once partition 1
        -- was idle for 4 s of batches (a batch or two of slack)
        assert.is_true(wins[0].time - first_in >= 3600,
                       str_format("window 0 closed %d ms after the first records",
                                  wins[0].time - first_in))
        assert.same({ 9, 10, 10, 10 }, { wins[0].n, wins[1000].n, wins[2000].n, wins[3000].n })

        -- Now both partitions are idle and the watermark moves with processing
        -- time. Partition 1 delivers a record at 100000 and partition 0 one
        -- far ahead: the minimum, partition 1's, holds the window of 100000
        -- open until partition 1 is idle again (then both are, and the
        -- watermark goes on from there with processing time).
        local before = #ins
        mock:produce("wa_in", { "t100000" }, { partition = 1 })
        mock:produce("wa_in", { "t200500" }, { partition = 0 })
        d:wait_until(function()
            ins, wins = output()
            return wins[100000] ~= nil, "the window of partition 1's record"
        end, 60, 0.05, "the window at 100000")
        local second_in = ins[before + 1][1]
        assert.equal(1, wins[100000].n)
        assert.is_nil(wins[200000])             -- the watermark never passed partition 1's
        assert.is_true(wins[100000].time - second_in >= 3600,
                       str_format("window 100000 closed %d ms after the records",
                                  wins[100000].time - second_in))
        local late = d:log_lines("late record", { plain = true })
        assert.same({}, late)
    end)
end)
