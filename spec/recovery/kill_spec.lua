-- Recovery: kill -9 under load, again and again, with a socket source and
-- the write-ahead log. The test's own sender owns the numbered sequence:
-- ember never sees a number twice from it, so every duplicate in the
-- output is a replay, and every gap a loss.
--
-- What may be lost, by design: TCP acknowledges bytes before ember reads
-- them, so what sat in the kernel's receive buffer, in the connector's
-- read buffer, or in the write-ahead log's not yet flushed buffer at the
-- kill is gone. Those are always the last records of a connection. So,
-- per connection: every number up to the highest one that reached the
-- output must be there, and what was sent after it must fit in the
-- buffers named above.

local driver = require "support.driver"
local rec = require "support.recovery"
local socket = require "socket"


local JOB = [[
local ember = require "ember"
local job = ember.job { name = "seq", batch_interval = "200ms" }

job:socket { host = "127.0.0.1", port = {{port}} }
   :save_as_text_files({{out}})

return job
]]

local KILLS = 20
local RATE = 10000          -- streaming.receiver.maxRate, records/s
local SEND_RATE = 12000     -- the sender's pace, lines/s: above the rate, so the kernel queues fill
local BATCH_S, BLOCK_S = 0.2, 0.1
-- One batch's worth: rate x interval plus one block.
local BATCH_BOUND = RATE * BATCH_S + RATE * BLOCK_S
-- What a kill may take besides the kernel queues: the connector's read
-- buffer (64 KiB with short lines) and one poll's records not yet flushed
-- to the log (at most a block interval of tokens, 8 bytes a line here).
local BUFFERS = 65536 + RATE * BLOCK_S * 8


describe("kill -9 under load with a socket source and the write-ahead log", function()
    local d, s

    before_each(function()
        d = driver.new()
        s = d:own(rec.sender())
    end)

    after_each(function()
        d:stop()
    end)

    it("loses no record ember read and replays at most one batch per kill, over "
       .. KILLS .. " kills", function()
        local seed = tonumber(os.getenv("EMBER_SPEC_SEED")) or os.time()
        math.randomseed(seed)
        d:write_job("seq", driver.render(JOB, { port = s:port(),
                                                out = driver.quote(d:path("out/seq")) }))
        local conf = driver.conf {
            ["streaming.receiver.writeAheadLog.enable"] = "true",
            ["streaming.receiver.maxRate"] = RATE,
        }
        local logs, starts = {}, {}
        for cycle = 1, KILLS do
            starts[cycle] = socket.gettime() * 1000
            d:start { conf = conf }
            s:accept(10)
            local run_s = 0.3 + math.random() * 0.9
            s:pump(run_s, SEND_RATE)
            s:mark_queues()
            d:signal("KILL")
            assert.equal(128 + 9, d:wait_exit(10))
            s:close_conn()
            logs[cycle] = d:log()
        end

        -- The last run ends gracefully: everything sent on its connection
        -- must come out.
        starts[KILLS + 1] = socket.gettime() * 1000
        d:start { conf = conf }
        s:accept(10)
        s:pump(0.5, SEND_RATE)
        s:flush(10)
        s:wait_read(10)
        local last = s.conn.last
        d:wait_until(function()
            for _, line in ipairs(d:output_lines("out/seq")) do
                if line == tostring(last) then
                    return true
                end
            end
            return false
        end, 15, 0.05, "the last number sent (" .. last .. ") in the output")
        d:signal("TERM")
        assert.equal(0, d:wait_exit(15))
        logs[#logs + 1] = d:log()

        local lines = d:output_lines("out/seq")
        local r = rec.check_sequence(s.conns, lines)
        local ctx = string.format("seed %d (EMBER_SPEC_SEED reruns it)", seed)

        -- Replays and damage seen at each start.
        local recovered, damaged, biggest = 0, 0, 0
        for _, log in ipairs(logs) do
            for n, b in log:gmatch("recovered (%d+) records in %d+ blocks from the write%-ahead "
                                   .. "log %((%d+) damaged bytes") do
                recovered = recovered + tonumber(n)
                damaged = damaged + tonumber(b)
            end
            for n in log:gmatch("%] batch %d+: (%d+) records") do
                biggest = math.max(biggest, tonumber(n))
            end
        end
        local lost_lines, lost_bytes, queued_bytes = 0, 0, 0
        for i, c in ipairs(r.per_conn) do
            if i <= KILLS then
                lost_lines = lost_lines + c.unread
                lost_bytes = lost_bytes + c.lost_bytes
                queued_bytes = queued_bytes + c.tx + c.rx
            end
        end
        -- Per kill: the run after it replays at most one batch that had
        -- already come out. Batch times tell which run wrote a file.
        local seen, run = {}, 0
        local replayed = {}
        for _, f in ipairs(d:output_files("out/seq")) do
            while run < #starts and f.time >= starts[run + 1] do
                run = run + 1
            end
            for _, line in ipairs(f.lines) do
                if seen[line] then
                    replayed[run] = (replayed[run] or 0) + 1
                end
                seen[line] = true
            end
        end
        local worst = 0
        for _, n in pairs(replayed) do
            worst = math.max(worst, n)
        end
        io.stderr:write(string.format(
            "\n[kill -9] %s: %d kills, %d numbers sent, %d lines out (%d distinct), %d duplicates "
            .. "(at most %d after one kill; bound %d per kill), %d records replayed from the "
            .. "log, %d damaged log bytes set aside, biggest batch %d, lost by design %d lines / "
            .. "%d bytes (kernel queues at the kills: %d bytes)\n", ctx, KILLS, s.next - 1,
            r.appearances, r.distinct, r.dups, worst, BATCH_BOUND, recovered, damaged, biggest,
            lost_lines, lost_bytes, queued_bytes))

        assert.same({}, r.foreign, ctx)
        assert.equal(KILLS + 1, #r.per_conn)
        for i, c in ipairs(r.per_conn) do
            local what = string.format("%s: connection %d (numbers %d..%d, %d sent bytes)", ctx,
                                       i, c.first, c.last, c.sent)
            -- No gap among the records ember read.
            assert.equal(0, c.missing, what .. ": numbers missing below " .. c.top .. ", first "
                         .. tostring(r.missing[1]))
            -- Every run read something, so the check above is not empty.
            assert.is_true(c.top >= c.first, what .. ": nothing of it came out")
            if i <= KILLS then
                -- What a kill lost fits in the buffers it may take.
                assert.is_true(c.lost_bytes <= c.tx + c.rx + BUFFERS, string.format(
                    "%s: %d bytes lost, more than the kernel queues at the kill (%d + %d) plus "
                    .. "%d of ember's buffers", what, c.lost_bytes, c.tx, c.rx, BUFFERS))
            else
                -- The graceful last run: everything.
                assert.equal(c.last, c.top, what)
            end
        end
        assert.is_true(r.dups <= KILLS * BATCH_BOUND, string.format(
            "%s: %d duplicates, more than one batch (%d) per kill", ctx, r.dups, BATCH_BOUND))
        for k = 2, KILLS + 1 do
            assert.is_true((replayed[k] or 0) <= BATCH_BOUND, string.format(
                "%s: the run after kill %d output %d records again, more than one batch (%d)",
                ctx, k - 1, replayed[k] or 0, BATCH_BOUND))
        end
        assert.is_nil(replayed[1])

        -- Everything replayed was processed and its segments deleted.
        local wal = rec.list_dir(rec.wal_dir(d:path("checkpoint/seq"), 1, "socket")) or {}
        assert.same({}, wal)
    end)
end)
