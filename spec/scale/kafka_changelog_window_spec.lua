-- Event-time windows that follow their partitions: tumbling counts per key
-- (emit = "final" and emit = "update") over a Kafka consumer group of two
-- and three drivers, the windows and each partition's watermark kept in the
-- compacted changelog topic (docs/scaling.md). Across a kill -9 of a member
-- (after a commit: changelog and checkpoint written, the group's offsets
-- not), a join and a graceful stop, checked against a plain-Lua model of the
-- records sent:
--
--   final:  every window emitted is emitted once, with the exact count of
--           its key's records in it; every window the records sent close
--           is emitted (none lost, including the ones open in the state of
--           a member that died or left);
--   update: the counts emitted for a window are never repeated (a window
--           closed before its partition moved is not started again by the
--           next owner), and the last one is the exact count.
--
-- Strictly so with cooperative-sticky; with the eager protocol a window may
-- be emitted again, with the same count (see strict below).
--
-- Each key is pinned to one partition (key k<j> to partition j % 4), and
-- every 7th record has a key of its own (s<i>, partition i % 4): its window
-- gets no record after it, so one open when its partition moves is emitted
-- only if the next owner closes it from the state it restored. And
-- every partition gets the same event times in order (record i at
-- T0 + 10 i ms), so no record is ever late: the watermark (idle_timeout
-- false) is the lowest partition's on each driver.

local driver = require "support.driver"
local kafka_mock = require "support.kafka_mock"
local assert = require "luassert"

local JOB = [[
local ember = require "ember"
local job = ember.job { name = "win", batch_interval = "300ms" }

local ev = job:kafka { brokers = {{b}}, topic = "events", group = {{group}}, start = "earliest",
                       format = "record", changelog = true, max_rate_per_partition = {{rate}},
                       ["kafka.partition.assignment.strategy"] = {{strategy}}, {{client}} }
   :event_time(function(r) return tonumber(r.value) end)
   :with_watermark(0, { idle_timeout = false })
   :map(function(r) return r.key, 1 end)

local function write(tag)
    return function(wins)
        if #wins == 0 then return end
        local f = assert(io.open({{out}}, "a"))
        for _, kv in ipairs(wins) do
            f:write(tag, "\t", kv[1], "\t", kv[2].start, "\t", kv[2].value, "\n")
        end
        f:close()
    end
end

ev:event_window { size = "3s", name = "final" }:count():foreach_batch(write("F"))
ev:event_window { size = "3s", emit = "update", name = "update" }:count():foreach_batch(write("U"))

return job
]]

local KEYS, PARTS, SIZE, T0, STEP = 24, 4, 3000, 1700000000000, 10

-- strict: no window emitted twice, no update repeated (cooperative-sticky:
-- a stop or a kill moves only the departed member's partitions). With the
-- eager protocol a survivor's batch that read a partition just before its
-- revoke and again after it came back is not written to the changelog and
-- is computed again (docs/scaling.md): its outputs are written twice, as
-- everywhere outputs are at-least-once. There a window emitted again must
-- hold the same exact count, and updates never go past it.
local function scenario(label, strategy, group, strict)
    describe("event-time windows in a Kafka changelog, across the members of a group ("
             .. label .. ")", function()
        local mock
        local members = {}
        local changelog = group .. "-win-changelog"
        local sent = 0                  -- records sent: i = 0 .. sent - 1
        local model = {}                -- "key start" -> count
        local top = {}                  -- partition -> highest event time sent

        local function start_member(env)
            local d = driver.new()
            d.out = d:path("out")
            d:write_job("win.lua", driver.render(JOB, {
                b = driver.quote(mock.bootstrap), client = kafka_mock.CLIENT,
                out = driver.quote(d.out), rate = 50, group = driver.quote(group),
                strategy = driver.quote(strategy) }))
            d:start { conf = driver.conf { ["streaming.blockInterval"] = "100ms" }, env = env }
            members[#members + 1] = d
            return d
        end

        -- n more records, each partition's in event-time order; extra: more
        -- records { key, t } (pinned to the partition of their key's digit)
        local function send(n, extra)
            local by = {}
            for p = 0, PARTS - 1 do
                by[p] = {}
            end
            local function put(key, j, t)
                local p = j % PARTS
                by[p][#by[p] + 1] = { key = key, value = tostring(t) }
                local start = t - t % SIZE
                model[key .. " " .. start] = (model[key .. " " .. start] or 0) + 1
                if not top[p] or t > top[p] then
                    top[p] = t
                end
            end
            for i = sent, sent + n - 1 do
                local j = i % KEYS
                if i % 7 == 3 then
                    put("s" .. i, i, T0 + STEP * i)     -- a window with one record
                else
                    put("k" .. j, j, T0 + STEP * i)
                end
            end
            sent = sent + n
            for _, e in ipairs(extra or {}) do
                put(e[1], e[2], e[3])
            end
            for p = 0, PARTS - 1 do
                if #by[p] > 0 then
                    mock:produce("events", by[p], { partition = p })
                end
            end
        end

        -- tag -> "key start" -> { counts emitted, in the order read }
        local function emitted()
            local out = { F = {}, U = {} }
            for _, d in ipairs(members) do
                for _, line in ipairs(d:file_lines("out")) do
                    local tag, k, start, n = line:match("^(%u)\t(%S+)\t(%d+)\t(%d+)$")
                    if tag then
                        local w = k .. " " .. start
                        out[tag][w] = out[tag][w] or {}
                        table.insert(out[tag][w], tonumber(n))
                    end
                end
            end
            return out
        end

        -- The windows the records sent so far close: those of every key
        -- whose stop the lowest partition's event time reached.
        local function closable()
            local lo
            for p = 0, PARTS - 1 do
                if not lo or top[p] < lo then
                    lo = top[p]
                end
            end
            local out = {}
            for w in pairs(model) do
                local start = tonumber(w:match(" (%d+)$"))
                if start + SIZE <= lo and not w:find("^flush") then
                    out[#out + 1] = w
                end
            end
            table.sort(out)
            return out
        end

        -- Waits until every closable window was emitted (final), then checks
        -- each window emitted: once, and exact; updates never repeated.
        local function exact(what)
            local want = closable()
            local got
            driver.wait_until(function()
                got = emitted()
                for _, w in ipairs(want) do
                    if not got.F[w] then
                        return false, w
                    end
                end
                return true
            end, 120, 0.2, what .. ": the " .. #want .. " closed windows emitted", function()
                local missing = {}
                for _, w in ipairs(want) do
                    if not got.F[w] then
                        missing[#missing + 1] = w
                    end
                end
                return "missing: " .. #missing .. ", e.g. " .. table.concat(missing, ", ", 1,
                                                                             math.min(5, #missing))
            end)
            driver.sleep(1.5) -- let anything emitted twice show (the assertions do not wait)
            got = emitted()
            local bad = {}
            for w, ns in pairs(got.F) do
                local same = true
                for _, n in ipairs(ns) do
                    same = same and n == model[w]
                end
                if (strict and #ns ~= 1) or not same then
                    bad[#bad + 1] = w .. ": emitted " .. table.concat(ns, ",") .. ", sent "
                                    .. tostring(model[w])
                end
            end
            for w, ns in pairs(got.U) do
                local seen = {}
                for _, n in ipairs(ns) do
                    if (strict and seen[n]) or n > (model[w] or 0) then
                        bad[#bad + 1] = w .. ": updates " .. table.concat(ns, ",") .. ", sent "
                                        .. tostring(model[w])
                        break
                    end
                    seen[n] = true
                end
            end
            for _, w in ipairs(want) do
                local ns = got.U[w]
                local hi = 0
                for _, n in ipairs(ns or {}) do
                    hi = math.max(hi, n)
                end
                if hi ~= model[w] then
                    bad[#bad + 1] = w .. ": last update " .. hi .. ", sent " .. model[w]
                end
            end
            table.sort(bad)
            assert.same({}, bad, what)
            for _, d in ipairs(members) do
                assert.is_nil(d:log():find("late record", 1, true), what .. ": a late record")
            end
            return #want
        end

        setup(function()
            mock = kafka_mock.start { topics = { "events:" .. PARTS, changelog .. ":" .. PARTS } }
        end)

        teardown(function()
            for _, d in ipairs(members) do
                d:stop()
            end
            if mock then mock:stop() end
        end)

        it("emits every window once and exactly across a kill -9 of one of two members",
           function()
            local a = start_member()
            -- b dies right after its 3rd commit with records, with windows
            -- emitted and others open in its state
            local b = start_member { EMBER_FAILPOINT = "after_commit:3" }
            driver.wait_until(function()
                return #a:log_lines("assigned events%[%d") + #b:log_lines("assigned events%[%d") >= 2
                    and a:log():find("restored from " .. changelog, 1, true) ~= nil
                    and b:log():find("restored from " .. changelog, 1, true) ~= nil
            end, 60, 0.2, "both members to hold partitions")
            send(1600)
            b:wait_exit(120)
            assert.truthy(b:log():find("failpoint after_commit reached"))
            a:wait_for_log("state changelog: partition %d+ restored from "
                           .. changelog:gsub("%-", "%%-") .. " in %d+ ms %([1-9]%d* bytes", 90)
            local n = exact("after the kill")
            assert.is_true(n >= 4 * KEYS, "windows closed: " .. n)
            -- b emitted windows before it died, and left others open
            local bf = 0
            for _, line in ipairs(b:file_lines("out")) do
                bf = bf + (line:find("^F\t") and 1 or 0)
            end
            assert.is_true(bf > 0, "b emitted no final window before it died")
            send(800)
            exact("after the kill, more records")
        end)

        it("emits every window once and exactly across a join and a graceful stop", function()
            local a = members[1]
            local c = start_member()
            c:wait_for_log("assigned events%[%d", 60)
            send(800)
            exact("after a join")
            a:signal("TERM")
            a:wait_exit(60)
            c:wait_for_log("restored from " .. changelog:gsub("%-", "%%-") .. " in %d+ ms %([1-9]", 60)
            send(800)
            exact("after a graceful stop")
            -- a record far ahead on every partition closes the last windows
            local flush = {}
            local t = T0 + STEP * sent + 2 * SIZE
            for p = 0, PARTS - 1 do
                flush[#flush + 1] = { "flush" .. p, p, t }
            end
            send(0, flush)
            local n = exact("every window")
            local all = 0
            for w in pairs(model) do
                all = all + (w:find("^flush") and 0 or 1)
            end
            assert.equal(all, n)
        end)
    end)
end

scenario("cooperative", "cooperative-sticky", "wc", true)
scenario("eager", "range,roundrobin", "we", false)
