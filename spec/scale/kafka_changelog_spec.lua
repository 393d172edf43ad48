-- State that follows its partitions: a count per key (map_with_state) over
-- a Kafka consumer group of two and three drivers, its state kept in a
-- compacted changelog topic (docs/scaling.md). After a kill -9 of a member
-- (at the one moment a timed kill almost never hits: the changelog and the
-- checkpoint written, the group's offsets not yet committed), a graceful
-- stop and a join, the count of every key is exact: the highest count any
-- member emitted for a key is the number of its records, never more.
--
-- The input is written with kcat, keyed, so each key lives in one
-- partition (librdkafka's partitioner); the members write "<key>\t<count>"
-- per record to their own files.

local driver = require "support.driver"
local kafka_mock = require "support.kafka_mock"
local assert = require "luassert"

local JOB = [[
local ember = require "ember"
local job = ember.job { name = "count", batch_interval = "300ms" }

job:kafka { brokers = {{b}}, topic = {{topic}}, group = {{group}}, start = "earliest",
            format = "record", changelog = true, max_rate_per_partition = {{rate}},
            ["kafka.partition.assignment.strategy"] = {{strategy}}, {{client}} }
   :map(function(r) return r.key, 1 end)
   :map_with_state { name = "counts", fn = function(key, one, state)
       local n = (state:get() or 0) + one
       state:set(n)
       return key, n
   end }
   :foreach_batch(function(pairs_, info)
       if #pairs_ == 0 then return end
       local f = assert(io.open({{out}}, "a"))
       for _, kv in ipairs(pairs_) do f:write(kv[1], "\t", kv[2], "\n") end
       f:close()
   end)

return job
]]

local KEYS = 40

-- n records, key k<i % KEYS>, values unique.
local function records(from, n)
    local out = {}
    for i = from, from + n - 1 do
        out[#out + 1] = { key = "k" .. (i % KEYS), value = "v" .. i }
    end
    return out
end

local function scenarios(label, strategy, group)
    describe("keyed state in a Kafka changelog, across the members of a group (" .. label
             .. ")", function()
        local mock
        local members = {}
        local changelog = group .. "-count-changelog"

        local function start_member(env)
            local d = driver.new()
            d.out = d:path("out")
            d:write_job("count.lua", driver.render(JOB, {
                b = driver.quote(mock.bootstrap), client = kafka_mock.CLIENT,
                out = driver.quote(d.out), rate = 50, topic = driver.quote("events"),
                group = driver.quote(group), strategy = driver.quote(strategy) }))
            d:start { conf = driver.conf { ["streaming.blockInterval"] = "100ms" }, env = env }
            members[#members + 1] = d
            return d
        end

        -- key -> the highest count any member (alive or dead) emitted
        local function highest()
            local top = {}
            for _, d in ipairs(members) do
                for _, line in ipairs(d:file_lines("out")) do
                    local k, n = line:match("^(%S+)\t(%d+)$")
                    if k then
                        n = tonumber(n)
                        if not top[k] or n > top[k] then
                            top[k] = n
                        end
                    end
                end
            end
            return top
        end

        -- Waits until every key reached per_key, then checks none went past it.
        local function exact(per_key, what)
            local top
            driver.wait_until(function()
                top = highest()
                for i = 0, KEYS - 1 do
                    if (top["k" .. i] or 0) < per_key then
                        return false
                    end
                end
                return true
            end, 120, 0.2, what .. ": every key counted to " .. per_key, function()
                local short = {}
                for i = 0, KEYS - 1 do
                    if (top["k" .. i] or 0) < per_key then
                        short[#short + 1] = "k" .. i .. "=" .. tostring(top["k" .. i])
                    end
                end
                return "short: " .. table.concat(short, " ")
            end)
            driver.sleep(1.5) -- let anything read twice show (the assertion below has no wait)
            top = highest()
            local over = {}
            for i = 0, KEYS - 1 do
                if top["k" .. i] ~= per_key then
                    over[#over + 1] = "k" .. i .. "=" .. tostring(top["k" .. i])
                end
            end
            assert.same({}, over, what .. ": counts other than " .. per_key)
        end

        setup(function()
            mock = kafka_mock.start { topics = { "events:4", changelog .. ":4" } }
        end)

        teardown(function()
            for _, d in ipairs(members) do
                d:stop()
            end
            if mock then mock:stop() end
        end)

        it("counts exactly per key across a kill -9 of one of two members", function()
            local a = start_member()
            -- b dies right after its first commit with records: state and
            -- checkpoint written, its offsets not committed to the group
            local b = start_member { EMBER_FAILPOINT = "after_commit:1" }
            a:wait_for_log("assigned events%[", 60)
            b:wait_for_log("assigned events%[", 60)
            driver.wait_until(function()
                return #a:log_lines("assigned events%[%d") + #b:log_lines("assigned events%[%d") >= 2
                    and a:log():find("restored from " .. changelog, 1, true) ~= nil
                    and b:log():find("restored from " .. changelog, 1, true) ~= nil
            end, 60, 0.2, "both members to hold partitions")
            mock:produce("events", records(0, 1600))
            b:wait_exit(120)
            assert.truthy(b:log():find("failpoint after_commit reached"))
            -- b's partitions move to a, which restores their state from the
            -- changelog (b died with most of its share unread: 50 records/s
            -- per partition)
            a:wait_for_log("state changelog: partition %d+ restored from "
                           .. changelog:gsub("%-", "%%-") .. " in %d+ ms %([1-9]%d* bytes", 90)
            exact(40, "after the kill")
            mock:produce("events", records(1600, 800))
            exact(60, "after the kill, more records")
        end)

        it("counts exactly per key across a join and a graceful stop", function()
            local a = members[1]
            local c = start_member()
            c:wait_for_log("assigned events%[%d", 60)
            mock:produce("events", records(2400, 800))
            exact(80, "after a join")
            a:signal("TERM")
            a:wait_exit(60)
            c:wait_for_log("restored from " .. changelog:gsub("%-", "%%-") .. " in %d+ ms %([1-9]", 60)
            mock:produce("events", records(3200, 800))
            exact(100, "after a graceful stop")
        end)
    end)
end

scenarios("eager", "range,roundrobin", "cg")
scenarios("cooperative", "cooperative-sticky", "coop")

describe("keyed state in a Kafka changelog, a job that breaks its rule", function()
    local mock, d

    setup(function()
        mock = kafka_mock.start { topics = { "mixed:2", "mx-count-changelog:2" } }
    end)

    teardown(function()
        if d then d:stop() end
        if mock then mock:stop() end
    end)

    it("fails a record whose key already has state from another partition, naming the key",
       function()
        d = driver.new()
        d.out = d:path("out")
        d:write_job("count.lua", driver.render(JOB, {
            b = driver.quote(mock.bootstrap), client = kafka_mock.CLIENT,
            out = driver.quote(d.out), rate = 1000, topic = driver.quote("mixed"),
            group = driver.quote("mx"), strategy = driver.quote("range,roundrobin") }))
        d:start { conf = driver.conf { ["streaming.blockInterval"] = "100ms" } }
        d:wait_for_log("assigned mixed%[0,1%]", 60)
        mock:produce("mixed", { { key = "same", value = "a" } }, { partition = 0 })
        d:wait_until(function() return #d:file_lines("out") >= 1 end, 30, 0.1, "the first record")
        mock:produce("mixed", { { key = "same", value = "b" } }, { partition = 1 })
        d:wait_for_log("key \"same\" came from partition 1 but its state lives with partition 0", 30,
                       { plain = true })
        assert.same({ "same\t1" }, d:file_lines("out"))
        assert.is_true(d:running())
    end)

    it("refuses to load a job whose stateful operator is fed by a wide one", function()
        local e = driver.new()
        e:write_job("wide.lua", driver.render([[
local ember = require "ember"
local job = ember.job { name = "wide" }
job:kafka { brokers = {{b}}, topic = "mixed", group = "wx", changelog = true }
   :map(function(v) return v, 1 end)
   :reduce_by_key(function(a, b) return a + b end)
   :update_state_by_key(function(values, n) return (n or 0) + #values end)
   :print()
return job
]], { b = driver.quote(mock.bootstrap) }))
        e:start {}
        e:wait_for_log("changelog = true: update_state_by_key", 30, { plain = true })
        local log = e:log()
        e:stop()
        assert.truthy(log:find("is fed by 'reduce_by_key'", 1, true), log)
    end)
end)
