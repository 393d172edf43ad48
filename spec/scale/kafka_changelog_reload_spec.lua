-- Keyed state in a Kafka changelog (docs/scaling.md) across the two things
-- a running driver does to it besides moving partitions: a SIGHUP reload of
-- the job (same state_version, a new one with migrate, a new one without),
-- and a commit cut short between its values and its marker (the tail a
-- restore must repair, so that compaction can never keep an uncovered value
-- as a key's newest).
--
-- The input is keyed (kcat), so each key lives in one partition; drivers
-- write "<key>\t<count>" per record to their own file. The changelog is
-- read back with kcat and decoded here (string.buffer, as ember writes it),
-- compacted as Kafka would compact it: the last record of each key wins.

local driver = require "support.driver"
local kafka_mock = require "support.kafka_mock"
local buffer = require "string.buffer"
local assert = require "luassert"

local JOB = [[
local ember = require "ember"
-- {{edit}}
local job = ember.job { name = "count", batch_interval = "300ms", {{version}} {{migrate}} }

job:kafka { brokers = {{b}}, topic = {{topic}}, group = {{group}}, start = "earliest",
            format = "record", changelog = true, max_rate_per_partition = {{rate}}, {{client}} }
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

local MIGRATE = [[migrate = function(old, from)
    local m = {}
    for k, n in pairs(old.counts or {}) do m[k] = n * 1000 end
    return { counts = m }
end]]

local KEYS = 20

-- n records per key for the keys first..last.
local function records(first, last, n, tag)
    local out = {}
    for i = 1, n do
        for k = first, last do
            out[#out + 1] = { key = "k" .. k, value = tag .. "-" .. i }
        end
    end
    return out
end

-- Every record of a topic read with kcat, binary-safe: { partition, offset,
-- key (nil: none), value (nil: a tombstone) } in the order read.
local function read_topic(mock, topic)
    local cmd = "timeout 30 kcat -b '" .. mock.bootstrap .. "' -C -t '" .. topic
                .. "' -o beginning -e -q -f '%p %o %K %S\\n%k%s\\n'"
    local p = io.popen(cmd)
    local out = p:read("*a")
    p:close()
    local got, at = {}, 1
    while at <= #out do
        local nl = out:find("\n", at, true)
        assert(nl, "kcat: a header without its line end at byte " .. at)
        local part, off, kl, vl = out:sub(at, nl - 1):match("^(%d+) (%d+) (%-?%d+) (%-?%d+)$")
        assert(part, "kcat: unexpected header '" .. out:sub(at, nl - 1) .. "'")
        kl, vl = tonumber(kl), tonumber(vl)
        at = nl + 1
        local key = kl >= 0 and out:sub(at, at + kl - 1) or nil
        at = at + math.max(kl, 0)
        local value = vl >= 0 and out:sub(at, at + vl - 1) or nil
        at = at + math.max(vl, 0) + 1
        got[#got + 1] = { partition = tonumber(part), offset = tonumber(off), key = key,
                          value = value }
    end
    return got
end

-- The changelog as a restore after a full compaction would see it: per
-- partition, the last record of each key kept, and of those the ones before
-- the last marker applied. Returns partition -> { marker = input offset,
-- version =, tail = records after the last marker before compaction,
-- counts = key -> count }.
local function compacted(mock, topic)
    local parts = {}
    for _, r in ipairs(read_topic(mock, topic)) do
        local p = parts[r.partition] or { last = {}, order = {}, tail = 0 }
        parts[r.partition] = p
        if r.key then
            if p.last[r.key] == nil then
                p.order[#p.order + 1] = r.key
            end
            p.last[r.key] = r
            if r.key == "m" then
                p.tail = 0
            else
                p.tail = p.tail + 1
            end
        end
    end
    local out = {}
    for n, p in pairs(parts) do
        local m = p.last["m"]
        local o = { counts = {}, tail = p.tail, marker = -1 }
        if m then
            o.marker = tonumber(m.value:match("^(%-?%d+)"))
            o.version = m.value:match(" v=(.*)$")
        end
        for _, k in ipairs(p.order) do
            local r = p.last[k]
            if k ~= "m" and m and r.offset < m.offset and r.value then
                local key = buffer.decode(k:sub(2))
                o.counts[key[2]] = buffer.decode(r.value)[1]
            end
        end
        out[n] = o
    end
    return out
end

describe("keyed state in a Kafka changelog, across reloads", function()
    local mock
    local members = {}
    local changelog = "rl-count-changelog"
    local pattern = changelog:gsub("%-", "%%-")

    local function job_text(d, opts)
        return driver.render(JOB, {
            b = driver.quote(mock.bootstrap), client = kafka_mock.CLIENT,
            out = driver.quote(d.out), rate = opts.rate or 400, topic = driver.quote("events"),
            group = driver.quote("rl"), edit = opts.edit or "first",
            version = opts.version and ("state_version = " .. opts.version .. ",") or "",
            migrate = opts.migrate and MIGRATE or "" })
    end

    local function start_member(opts)
        local d = driver.new()
        d.out = d:path("out")
        d:write_job("count.lua", job_text(d, opts))
        d:start { conf = driver.conf { ["streaming.blockInterval"] = "100ms" }, env = opts.env }
        members[#members + 1] = d
        return d
    end

    -- d's output lines after the first from
    local function lines(d, from)
        local out = {}
        for i, line in ipairs(d:file_lines("out")) do
            if i > (from or 0) then
                out[#out + 1] = line
            end
        end
        return out
    end

    -- key -> the last count d emitted for it (after line from)
    local function last(d, from)
        local top = {}
        for _, line in ipairs(lines(d, from)) do
            local k, n = line:match("^(%S+)\t(%d+)$")
            if k then
                top[k] = tonumber(n)
            end
        end
        return top
    end

    -- Waits until d's last count of every key is want[key], then checks it
    -- stays so and that no count above it was emitted (after line from).
    local function exact(d, want, what, from)
        local top
        local function off()
            local bad = {}
            for k, n in pairs(want) do
                if top[k] ~= n then
                    bad[#bad + 1] = k .. "=" .. tostring(top[k]) .. " (want " .. n .. ")"
                end
            end
            table.sort(bad)
            return bad
        end
        driver.wait_until(function()
            top = last(d, from)
            return #off() == 0
        end, 120, 0.2, what, function() return table.concat(off(), " ") end)
        driver.sleep(1.5) -- anything counted twice shows by now (no wait below)
        top = last(d, from)
        assert.same({}, off(), what)
        local over = {}
        for _, line in ipairs(lines(d, from)) do
            local k, n = line:match("^(%S+)\t(%d+)$")
            if k and want[k] and tonumber(n) > want[k] then
                over[#over + 1] = line
            end
        end
        assert.same({}, over, what .. ": counts above the exact one")
    end

    local function all(n, from, to)
        local w = {}
        for k = from or 0, to or KEYS - 1 do
            w["k" .. k] = n
        end
        return w
    end

    local function reload(d, opts)
        local mark = d:log_mark()
        d:write_job("count.lua", job_text(d, opts))
        d:signal("HUP")
        d:wait_for_log("now running the new version", 60, { from = mark })
        return mark
    end

    -- A reload to state_version 2 whose migrate raises.
    local function reload_broken(d)
        local mark = d:log_mark()
        local text = job_text(d, { version = 2, edit = "broken" })
        text = text:gsub("state_version = 2,", "state_version = 2, migrate = function() "
                         .. "error(\"no, not this state\") end,")
        d:write_job("count.lua", text)
        d:signal("HUP")
        return mark
    end

    setup(function()
        mock = kafka_mock.start { topics = { "events:2", changelog .. ":2" } }
    end)

    teardown(function()
        for _, d in ipairs(members) do
            d:stop()
        end
        if mock then mock:stop() end
    end)

    it("keeps every count exact across a reload with the same state_version", function()
        local a = start_member { version = 1 }
        a:wait_for_log("assigned events%[0,1%]", 60)
        mock:produce("events", records(0, KEYS - 1, 10, "a"))
        exact(a, all(10), "before the reload")
        local mark = reload(a, { version = 1, edit = "second" })
        mock:produce("events", records(0, KEYS - 1, 10, "b"))
        exact(a, all(20), "after a reload with the same state_version")
        -- the receiver was kept (no new assignment): the new version read
        -- the state of both partitions from the changelog itself
        a:wait_for_log("now running the new version (1 of 1 sources kept running)", 5,
                       { from = mark, plain = true })
        a:wait_for_log("the state of 2 partitions read again for the job's new version", 5,
                       { from = mark, plain = true })
    end)

    it("keeps the old version running when migrate raises on the changelog's state", function()
        local a = members[1]
        local mark = reload_broken(a)
        a:wait_for_log("migrate of job 'count' from state_version 1 to 2 failed: "
                       .. "[^\n]*count.lua:%d+: no, not this state", 60, { from = mark })
        a:wait_for_log("reload failed; the running version keeps running", 10,
                       { from = mark, plain = true })
        assert.equal(0, #a:log_lines("now running the new version", { from = mark, plain = true }))
        mock:produce("events", records(0, KEYS - 1, 5, "r"))
        exact(a, all(25), "the old version, counting on")
    end)

    it("writes the migrated state to the changelog, so the next owner restores it", function()
        local a = members[1]
        local mark = reload(a, { version = 2, migrate = true, edit = "third" })
        a:wait_for_log("holds state_version 1, the job 2: %d+ keys migrated", 60, { from = mark })
        -- only half the keys get records: the others' migrated values reach
        -- the changelog through the rewrite alone
        mock:produce("events", records(0, 9, 5, "c"))
        exact(a, all(25005, 0, 9), "after the migration")
        a:signal("TERM")
        a:wait_exit(60)
        local cl = compacted(mock, changelog)
        for p = 0, 1 do
            assert.equal("2", cl[p].version, "partition " .. p .. "'s last marker")
        end
        local b = start_member { version = 2, migrate = true }
        b:wait_for_log("restored from " .. pattern, 90)
        mock:produce("events", records(0, KEYS - 1, 5, "d"))
        local want = all(25005)
        for k = 0, 9 do
            want["k" .. k] = 25010
        end
        exact(b, want, "on the next owner")
        assert.equal(0, #b:log_lines("holds state_version", { plain = true }),
                     "the next owner found the new version's state, nothing to migrate")
    end)

    it("does not give the old state to a new state_version without migrate", function()
        local b = members[2]
        local from = #b:file_lines("out")
        local mark = reload(b, { version = 3, edit = "fourth" })
        b:wait_for_log("holds state_version 2, the job 3: its state is not carried over "
                       .. "%(archived in [^)]+%)", 60, { from = mark })
        mock:produce("events", records(0, 9, 7, "e"))
        exact(b, all(7, 0, 9), "the new version's own counts", from)
        -- the discarded state is kept locally, and the changelog's last
        -- markers are the new version's, the old keys removed before them
        local ls = io.popen("ls " .. b.checkpoint_dir .. "/count/state/archive-changelog-*/ 2>&1")
        local archived = ls:read("*a")
        ls:close()
        assert.truthy(archived:find(changelog .. "-0.v2", 1, true), archived)
        driver.wait_until(function()
            local cl = compacted(mock, changelog)
            return cl[0].version == "3" and cl[1].version == "3"
        end, 30, 0.2, "the new version's markers")
        local cl = compacted(mock, changelog)
        for p = 0, 1 do
            for k, n in pairs(cl[p].counts) do
                assert.is_true(n <= 7, "partition " .. p .. ": " .. k .. " = " .. n)
            end
        end
        b:signal("KILL")
        b:wait_exit(30)
        local c = start_member { version = 3 }
        c:wait_for_log("restored from " .. pattern, 90)
        mock:produce("events", records(0, KEYS - 1, 3, "f"))
        local want = all(3)
        for k = 0, 9 do
            want["k" .. k] = 10
        end
        exact(c, want, "on the next owner, after a kill -9")
    end)
end)

describe("keyed state in a Kafka changelog, a commit cut short before its marker", function()
    local mock
    local members = {}
    local changelog = "tl-count-changelog"
    local pattern = changelog:gsub("%-", "%%-")

    local function start_member(rate, env)
        local d = driver.new()
        d.out = d:path("out")
        d:write_job("count.lua", driver.render(JOB, {
            b = driver.quote(mock.bootstrap), client = kafka_mock.CLIENT,
            out = driver.quote(d.out), rate = rate, topic = driver.quote("input"),
            group = driver.quote("tl"), edit = "", version = "", migrate = "" }))
        d:start { conf = driver.conf { ["streaming.blockInterval"] = "100ms" }, env = env }
        members[#members + 1] = d
        return d
    end

    -- key -> its records in input partition p below offset upto
    local function input_counts(p, upto)
        local c = {}
        for _, r in ipairs(mock:consume("input")) do
            if r.partition == p and r.offset < upto then
                c[r.key] = (c[r.key] or 0) + 1
            end
        end
        return c
    end

    -- What a restore after full compaction would load equals the input its
    -- marker covers, key by key, in every partition. Read when every
    -- partition ends with a marker: a running driver's commit writes its
    -- values a moment before its marker.
    local function compaction_safe(what)
        local cl
        driver.wait_until(function()
            cl = compacted(mock, changelog)
            return cl[0].tail == 0 and cl[1].tail == 0
        end, 30, 0.05, what .. ": the changelog between two commits")
        for p = 0, 1 do
            assert.is_true(cl[p].marker > 0, what .. ": partition " .. p .. " has a marker")
            assert.same(input_counts(p, cl[p].marker), cl[p].counts,
                        what .. ": partition " .. p .. " compacted, up to its last marker")
        end
        return cl
    end

    setup(function()
        mock = kafka_mock.start { topics = { "input:2", changelog .. ":2" } }
    end)

    teardown(function()
        for _, d in ipairs(members) do
            d:stop()
        end
        if mock then mock:stop() end
    end)

    it("writes the covered values over a tail, so compaction keeps the covered state", function()
        mock:produce("input", records(0, KEYS - 1, 30, "a"))
        -- a dies on its third commit with values: written, its marker not
        local a = start_member(100, { EMBER_FAILPOINT = "changelog_before_marker:3" })
        a:wait_exit(120)
        assert.truthy(a:log():find("failpoint changelog_before_marker reached", 1, true))
        local before = compacted(mock, changelog)
        assert.is_true(before[0].tail + before[1].tail > 0, "a tail after the last marker")
        -- b reads slowly, so its first commits cover fewer records than a's
        -- tail did: without the repair, those would leave tail values
        -- under b's markers
        local b = start_member(10)
        b:wait_for_log("a tail no marker covers repaired", 90)
        b:wait_for_log("the covered values of the %d+ keys they touched were written again", 10)
        compaction_safe("right after the restore")
        -- and b goes on counting exactly from there
        local want = {}
        for k = 0, KEYS - 1 do
            want["k" .. k] = 30
        end
        local top
        driver.wait_until(function()
            top = {}
            for _, line in ipairs(b:file_lines("out")) do
                local k, n = line:match("^(%S+)\t(%d+)$")
                if k then top[k] = tonumber(n) end
            end
            for k, n in pairs(want) do
                if top[k] ~= n then return false end
            end
            return true
        end, 120, 0.2, "b's counts to reach 30 per key")
        for _, line in ipairs(b:file_lines("out")) do
            local n = tonumber(line:match("\t(%d+)$"))
            assert.is_true(n <= 30, "a count above 30: " .. line)
        end
        b:signal("TERM")
        b:wait_exit(60)
        compaction_safe("after b stopped")
    end)
end)
