-- Kafka rebalances: a second driver joins the group mid-stream. The first
-- one's revoked partitions move to the new member; records of them it still
-- holds are dropped or left uncommitted, so the new owner reads them: no
-- record is lost (duplicates are allowed), and max_rate_per_partition still
-- holds on both members.

local driver = require "support.driver"
local kafka_mock = require "support.kafka_mock"


local COPY_JOB = [[
local ember = require "ember"
local job = ember.job { name = "member" }

job:kafka { brokers = {{b}}, topic = "shared", group = "shared", start = "earliest",
            max_rate_per_partition = 100, {{client}} }
   :foreach_batch(function(records)
       if #records == 0 then return end
       local f = assert(io.open({{out}}, "a"))
       for _, v in ipairs(records) do f:write(v, "\n") end
       f:close()
   end)

return job
]]


describe("kafka rebalance", function()
    local mock, a, b

    setup(function()
        mock = kafka_mock.start { topics = { "shared:4" } }
    end)

    teardown(function()
        if a then a:stop() end
        if b then b:stop() end
        if mock then mock:stop() end
    end)

    local function member()
        local d = driver.new()
        d:write_job("member.lua", driver.render(COPY_JOB, {
            b = driver.quote(mock.bootstrap), client = kafka_mock.CLIENT,
            out = driver.quote(d:path("out")) }))
        d:start()
        return d
    end

    it("loses no record when a second member joins mid-stream", function()
        local records = {}
        for i = 1, 2000 do
            records[i] = "s" .. i
        end
        mock:produce("shared", records)
        a = member()                                   -- 400 records/s over 4 partitions
        a:wait_until(function()
            local n = #a:file_lines("out")
            return n >= 200, n .. " records"
        end, 30, 0.05, "the first member to be reading")

        b = member()
        a:wait_for_log("revoked shared%[", 30)
        b:wait_for_log("assigned shared%[", 30)

        -- The cap holds across the move: at most 100 records/s per partition
        -- (plus the half second of tokens a new assignment starts with).
        local function total()
            return #a:file_lines("out") + #b:file_lines("out")
        end
        local t0, c0 = driver.now(), total()
        a:wait_until(function() return driver.now() - t0 >= 1.5 end, 5, 0.1, "1.5 s of reading")
        local read = total() - c0
        assert(read <= 4 * 100 * 1.5 + 4 * 50 + 100, read .. " records in 1.5 s over 4 partitions "
               .. "capped at 100 records/s each")

        local got
        a:wait_until(function()
            got = a:file_lines("out")
            for _, v in ipairs(b:file_lines("out")) do
                got[#got + 1] = v
            end
            local missing = kafka_mock.diff(records, got)
            return #missing == 0, #missing .. " of 2000 still missing"
        end, 60, 0.1, "every record at one member or the other")
        local missing, invented, dups = kafka_mock.diff(records, got)
        assert(#missing == 0 and #invented == 0, kafka_mock.describe_diff(missing, invented, dups))
        assert(#b:file_lines("out") > 0, "the new member read nothing")
    end)
end)
