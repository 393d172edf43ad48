-- Recovery: event-time windows across kill -9, again and again. A job
-- reads e<i> from a Kafka topic, gives each the event time i * 10 ms, and
-- counts per key (i % 5) in 1 s tumbling windows; every closed window is
-- appended to windows.<run>. One partition: with several, a consumer that
-- reads one partition's backlog for longer than idle_timeout before another
-- delivers makes the other's records late by design; the minimum over
-- partitions is checked in spec/unit/event_window_oracle_spec.lua, and an
-- assigned partition not seen yet in spec/kafka/watermark_assign_spec.lua.
--
-- Outputs are at-least-once: a kill between a batch's output and its
-- commit makes the batch run again, so a window may come out twice, but
-- with the same count, since the window's contents and the watermark are
-- restored with the offsets they were committed with. Every window must
-- come out, and every time with exactly the records of its second. None
-- may be late: the watermark trails the records by 10 s, after a restart
-- the restored watermark holds, and idle_timeout (10 s) is longer than a
-- restart's group join, so the partition does not turn idle while the job
-- waits for its assignment.
-- EMBER_SPEC_SEED reruns the same kill moments.

local driver = require "support.driver"
local kafka_mock = require "support.kafka_mock"

local now = driver.now
local str_format = string.format


local JOB = [[
local ember = require "ember"
local job = ember.job { name = "wk", batch_interval = "200ms" }

local dir = {{dir}}
local run = assert(io.open(dir .. "/run")):read("*l")
local out = dir .. "/windows." .. run

job:kafka { {{options}} }
  :event_time(function(v) return tonumber(v:match("%d+")) * 10 end)
  :with_watermark("10s", { idle_timeout = "10s" })
  :map(function(v) return "k" .. (tonumber(v:match("%d+")) % 5), 1 end)
  :event_window { size = "1s", name = "per_second" }
  :count()
  :foreach_batch(function(windows)
      if #windows > 0 then
          local t = {}
          for i, p in ipairs(windows) do
              t[i] = p[1] .. " " .. p[2].start .. " " .. p[2].value
          end
          local f = assert(io.open(out, "a"))
          f:write(table.concat(t, "\n"), "\n")
          f:close()
      end
  end)

return job
]]


local function seeded()
    local seed = tonumber(os.getenv("EMBER_SPEC_SEED")) or os.time()
    math.randomseed(seed)
    return str_format("seed %d (EMBER_SPEC_SEED reruns it)", seed)
end


describe("event-time windows across kill -9", function()
    local KILLS = 20
    local COUNT = 6000
    local mock, d

    setup(function()
        mock = kafka_mock.start { topics = { "wk_in:1" } }
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

    -- Every window line of every run: { id = "k start", n = count }.
    local function emitted(runs)
        local got = {}
        for run = 1, runs do
            local s = driver.read_file(d:path("windows." .. run)) or ""
            for line in s:gmatch("([^\n]*)\n") do
                local k, start, n = line:match("^(%S+) (%d+) (%d+)$")
                if k then                       -- a torn last line is not a window
                    got[#got + 1] = { id = k .. " " .. start, n = tonumber(n) }
                end
            end
        end
        return got
    end

    local function distinct(got)
        local seen, n = {}, 0
        for _, w in ipairs(got) do
            if not seen[w.id] then
                seen[w.id] = true
                n = n + 1
            end
        end
        return n
    end

    it("emits every window with its exact count, over " .. KILLS .. " kills", function()
        local ctx = seeded()
        local produced, want, nwant = {}, {}, 0
        for i = 1, COUNT do
            produced[i] = str_format("e%06d", i)
            local id = "k" .. (i % 5) .. " " .. (i * 10 - (i * 10) % 1000)
            if not want[id] then
                nwant = nwant + 1
            end
            want[id] = (want[id] or 0) + 1
        end
        mock:produce("wk_in", produced)
        d = driver.new()
        d:write_job("wk", driver.render(JOB, {
            dir = driver.quote(d:path()),
            options = "brokers = " .. driver.quote(mock.bootstrap) .. ', topic = "wk_in", '
                      .. 'group = "wk", start = "earliest", max_rate = 500, '
                      .. kafka_mock.CLIENT,
        }))
        local conf = driver.conf()
        local late = {}
        for run = 1, KILLS + 1 do
            driver.write_file(d:path("run"), run .. "\n")
            d:start { conf = conf }
            d:wait_for_log("assigned wk_in", 60)
            if run <= KILLS then
                local kill_at = now() + 0.2 + math.random() * 1.0
                d:wait_until(function()
                    return now() >= kill_at
                end, 5, 0.01, "the moment of kill " .. run)
                assert.is_true(d:running(), "ember exited in run " .. run)
                d:signal("KILL")
                assert.equal(128 + 9, d:wait_exit(10))
                driver.write_file(d:path("log." .. run), d:log())   -- each start rewrites it
                for _, l in ipairs(d:log_lines("late record", { plain = true })) do
                    late[#late + 1] = "run " .. run .. ": " .. l
                end
            else
                -- the last windows close once the partitions are idle (10 s)
                -- and the watermark moves with processing time (10 s more)
                d:wait_until(function()
                    local n = distinct(emitted(run))
                    return n >= nwant, n .. " of " .. nwant .. " windows"
                end, 120, 0.2, "every window in the last run")
                d:signal("TERM")
                assert.equal(0, d:wait_exit(20))
            end
        end

        local got = emitted(KILLS + 1)
        local wrong = {}
        for _, w in ipairs(got) do
            if want[w.id] ~= w.n then
                wrong[#wrong + 1] = str_format("%s: emitted %d, records %s", w.id, w.n,
                                               tostring(want[w.id]))
            end
        end
        table.sort(wrong)
        assert(#wrong == 0, ctx .. ": " .. #wrong .. " windows wrong: "
                            .. table.concat(wrong, "; ", 1, math.min(5, #wrong)))
        assert.equal(nwant, distinct(got), ctx .. ": windows that never came out")
        for _, l in ipairs(d:log_lines("late record", { plain = true })) do
            late[#late + 1] = "last run: " .. l
        end
        assert.same({}, late, ctx)
        -- some kills came after a commit: the windows were restored
        assert.is_true(#d:log_lines("state restored up to batch", { plain = true }) > 0)
    end)
end)
