-- Recovery: damaged write-ahead log segments. Segments left in
-- <checkpoint.dir>/<job>/wal/<n>-<connector>/ at start-up are replayed
-- before new input. A torn tail (a kill or a power cut mid-write) or a
-- damaged record never blocks start-up: every intact record is replayed,
-- and the damaged bytes are moved to <job>/wal/quarantine/<segment>.bad.
--
-- The segments here are written by the spec itself, framed as core/wal.h
-- documents it, so the format is checked too.

local driver = require "support.driver"
local rec = require "support.recovery"
local tcp = require "support.tcp"


local JOB = [[
local ember = require "ember"
local job = ember.job { name = "w", batch_interval = "200ms" }

job:socket { host = "127.0.0.1", port = {{port}} }
   :save_as_text_files({{out}})

return job
]]

local CONF = driver.conf { ["streaming.receiver.writeAheadLog.enable"] = "true" }


local function esc(s)
    return (s:gsub("%p", "%%%0"))
end

local function frames(prefix, n)
    local t = {}
    for i = 1, n do
        t[i] = rec.wal_frame(prefix .. i, { offset = i })
    end
    return t
end


describe("a damaged write-ahead log", function()
    local d, srv, wal_dir, qdir

    before_each(function()
        d = driver.new()
        srv = d:own(tcp.server())
        d:write_job("w", driver.render(JOB, { port = srv.port,
                                              out = driver.quote(d:path("out/w")) }))
        wal_dir = rec.wal_dir(d:path("checkpoint/w"), 1, "socket")
        qdir = d:path("checkpoint/w/wal/quarantine")
        driver.mkdir(d:path("checkpoint"))
        driver.mkdir(d:path("checkpoint/w"))
        driver.mkdir(d:path("checkpoint/w/wal"))
        driver.mkdir(wal_dir)
    end)

    after_each(function()
        d:stop()
    end)

    local function segment(seq, bytes)
        local path = wal_dir .. "/" .. rec.segment_name(seq)
        rec.write_bytes(path, bytes)
        return path
    end

    -- Starts ember, checks the replay is exactly `want` and that new input
    -- still flows after it, and that no segment is left once replayed.
    local function expect_replay(want)
        d:start { conf = CONF }
        srv:accept(10)
        d:wait_for_log("write%-ahead log recovery handed over; new input next", 10)
        srv:send_lines({ "new-1", "new-2" })
        local expected = {}
        for i, v in ipairs(want) do
            expected[i] = v
        end
        expected[#expected + 1] = "new-1"
        expected[#expected + 1] = "new-2"
        -- New input comes after every replayed record: once it is out,
        -- the replay is complete.
        d:wait_until(function()
            local got = d:output_lines("out/w")
            return got[#got] == "new-2", #got .. " lines"
        end, 10, 0.05, "the new input in the output")
        assert.same(expected, d:output_lines("out/w"))
        assert.is_true(d:running())
        -- Replayed segments are deleted once their batch succeeded.
        d:wait_until(function()
            for _, name in ipairs(rec.list_dir(wal_dir) or {}) do
                if name:match("^%d+%.wal$") and name <= rec.segment_name(99) then
                    return false, name .. " is still there"
                end
            end
            return true
        end, 5, 0.05, "the replayed segments to be deleted")
        d:signal("TERM")
        assert.equal(0, d:wait_exit(10))
    end

    it("with a torn tail: every whole record is replayed, the torn bytes set aside", function()
        local a = frames("a", 5)
        local torn = rec.wal_frame("a6", { offset = 6 })
        torn = torn:sub(1, 20) -- cut mid-record
        local p1 = segment(1, table.concat(a) .. torn)
        segment(2, table.concat(frames("c", 3)))
        local at = #table.concat(a)

        local want = { "a1", "a2", "a3", "a4", "a5", "c1", "c2", "c3" }
        expect_replay(want)
        local q = qdir .. "/" .. rec.segment_name(1) .. ".bad"
        local log = d:log()
        assert.truthy(log:find("write%-ahead log " .. esc(p1) .. ": 20 damaged bytes at offset "
                               .. at .. " moved to " .. esc(q)), log)
        assert.truthy(log:find("recovered 8 records in 2 blocks from the write%-ahead log %(20 "
                               .. "damaged bytes set aside%); they run before new input"), log)
        assert.equal(torn, rec.read_bytes(q))
    end)

    it("with a flipped byte in one record: that record is set aside, the records around it "
       .. "are replayed", function()
        local b = frames("b", 5)
        local good3 = b[3]
        -- Flip one bit of b3's value (the last byte of its frame).
        b[3] = good3:sub(1, -2) .. string.char(bit.bxor(good3:byte(-1), 0x01))
        local p1 = segment(1, table.concat(b))
        local at = #b[1] + #b[2]

        expect_replay({ "b1", "b2", "b4", "b5" })
        local q = qdir .. "/" .. rec.segment_name(1) .. ".bad"
        local log = d:log()
        assert.truthy(log:find("write%-ahead log " .. esc(p1) .. ": " .. #b[3]
                               .. " damaged bytes at offset " .. at .. " moved to " .. esc(q)),
                      log)
        assert.truthy(log:find("recovered 4 records in 1 blocks from the write%-ahead log %("
                               .. #b[3] .. " damaged bytes set aside%)"), log)
        assert.equal(b[3], rec.read_bytes(q))
    end)

    it("with a segment of garbage and an empty one: both are set aside and start-up goes on", function()
        local garbage = ("\0\1garbage\255"):rep(30)
        local p1 = segment(1, garbage)
        segment(2, "")
        segment(3, table.concat(frames("c", 2)))

        expect_replay({ "c1", "c2" })
        local q = qdir .. "/" .. rec.segment_name(1) .. ".bad"
        assert.truthy(d:log():find("write%-ahead log " .. esc(p1) .. ": " .. #garbage
                                   .. " damaged bytes at offset 0 moved to " .. esc(q)))
        assert.equal(garbage, rec.read_bytes(q))
        -- Nothing of them is left to replay.
        assert.is_nil(rec.read_bytes(p1))
        assert.is_nil(rec.read_bytes(wal_dir .. "/" .. rec.segment_name(2)))
    end)

    it("replays, in order, what ember itself logged and never processed before a kill -9", function()
        -- The job's batch interval is an hour: the records are read and
        -- logged, and no batch takes them before the kill.
        d:write_job("w", driver.render([[
local ember = require "ember"
local job = ember.job { name = "w", batch_interval = 3600 }
job:socket { host = "127.0.0.1", port = {{port}} }
   :save_as_text_files({{out}})
return job
]], { port = srv.port, out = driver.quote(d:path("out/w")) }))
        d:start { conf = CONF }
        srv:accept(10)
        local lines = {}
        for i = 1, 3000 do
            lines[i] = "r" .. i
        end
        srv:send_lines(lines)
        srv:wait_read(10)
        -- Read means flushed to the log: each poll's records are handed to
        -- the kernel before the next read.
        d:wait_until(function()
            local n = 0
            for _, name in ipairs(rec.list_dir(wal_dir) or {}) do
                local bytes = rec.read_bytes(wal_dir .. "/" .. name) or ""
                for _ in bytes:gmatch("EMW1") do
                    n = n + 1
                end
            end
            return n >= 3000, n .. " records in the log"
        end, 5, 0.05, "3000 records in the write-ahead log")
        d:signal("KILL")
        d:wait_exit(10)
        srv:close_client()
        assert.same({}, d:output_lines("out/w"))

        d:write_job("w", driver.render(JOB, { port = srv.port,
                                              out = driver.quote(d:path("out/w")) }))
        os.remove(d.stderr_path)
        expect_replay(lines)
        assert.truthy(d:log():find("recovered 3000 records in %d+ blocks from the write%-ahead "
                                   .. "log %(0 damaged bytes set aside%)"))
    end)
end)
