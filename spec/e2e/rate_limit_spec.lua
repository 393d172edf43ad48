-- End to end: the receiver's rate limit. With a rate R records/s and a
-- batch interval T, no batch holds more than R*T plus one block's worth
-- (R * blockInterval) of records, and every record still arrives.

local driver = require "support.driver"
local tcp = require "support.tcp"


local GENERATOR_JOB = [[
local ember = require "ember"
local job = ember.job { name = "limited", batch_interval = "300ms" }

job:generator { kind = "sequence", rate = 0, count = {{count}} {{max_rate}} }
   :save_as_text_files({{out}})
   :foreach_batch(function(records, info)
       local f = assert(io.open({{counts}}, "a"))
       f:write(info.time, " ", info.count, " ", #records, "\n")
       f:close()
   end)

return job
]]

local SOCKET_JOB = [[
local ember = require "ember"
local job = ember.job { name = "limited", batch_interval = "300ms" }

job:socket { host = "127.0.0.1", port = {{port}} }
   :save_as_text_files({{out}})

return job
]]

local BLOCK_S, BATCH_S = 0.1, 0.3


local function sequence(n)
    local t = {}
    for i = 1, n do
        t[i] = tostring(i)
    end
    return t
end


describe("the rate limit", function()
    local d

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    -- Waits for n records in the output, then checks them and every batch.
    local function check(n, rate)
        local bound = rate * BATCH_S + rate * BLOCK_S
        d:wait_until(function()
            local got = #d:output_lines("out/seq")
            return got >= n, got .. " of " .. n .. " records out"
        end, 20, 0.05, "all " .. n .. " records to come out")
        d:wait_for_log("%[limited%] batch %d+:", 5, { from = d:log_mark(), count = 2 })

        assert.same(sequence(n), d:output_lines("out/seq"))
        local batches = d:batches("limited")
        local total, biggest = 0, 0
        for _, b in ipairs(batches) do
            assert.is_true(b.records <= bound, string.format(
                "batch %d holds %d records, more than %d/s * %gs + one %gs block = %g\n%s",
                b.time, b.records, rate, BATCH_S, BLOCK_S, bound, b.line))
            total = total + b.records
            biggest = math.max(biggest, b.records)
        end
        assert.equal(n, total)
        -- The limit let records through at about its rate, not a trickle.
        assert.is_true(biggest >= rate * BATCH_S / 2, "largest batch: " .. biggest)
        return batches
    end

    it("keeps every batch of a source with max_rate under rate x interval plus one block", function()
        d:write_job("limited", driver.render(GENERATOR_JOB, {
            count = 1500, max_rate = ", max_rate = 1000",
            out = driver.quote(d:path("out/seq")), counts = driver.quote(d:path("counts")) }))
        d:start()
        local batches = check(1500, 1000)
        -- At 1000 records/s, 1500 records need at least 4 batches of 300ms.
        assert.is_true(#batches >= 4)
        -- foreach_batch saw the same batches as the log reports.
        local seen = {}
        for _, line in ipairs(d:file_lines("counts")) do
            local t, count, len = line:match("^(%d+) (%d+) (%d+)$")
            assert.equal(count, len)
            seen[tonumber(t)] = tonumber(count)
        end
        for _, b in ipairs(batches) do
            assert.equal(b.records, seen[b.time])
        end
    end)

    it("applies streaming.receiver.maxRate to a socket source and slows the sender down", function()
        local srv = d:own(tcp.server())
        d:write_job("limited", driver.render(SOCKET_JOB, {
            port = srv.port, out = driver.quote(d:path("out/seq")) }))
        d:start { conf = driver.conf { ["streaming.receiver.maxRate"] = 1000 } }
        srv:accept(10)
        srv:send_lines(sequence(1200), 15)
        check(1200, 1000)
    end)

    it("stops reading a socket when out of tokens, so the sender is held back", function()
        local srv = d:own(tcp.server())
        d:write_job("limited", driver.render(SOCKET_JOB, {
            port = srv.port, out = driver.quote(d:path("out/seq")) }))
        d:start { conf = driver.conf { ["streaming.receiver.maxRate"] = 100 } }
        srv:accept(10)
        -- 1 MiB of 100-byte lines at a time, for 1.5 seconds.
        local chunk = string.rep(string.rep("x", 99) .. "\n", 10486)
        local deadline, sent = driver.now() + 1.5, 0
        while driver.now() < deadline do
            sent = sent + srv:try_send(chunk, deadline - driver.now())
        end
        -- Unthrottled, ember reads hundreds of MiB in that time; held back,
        -- only what the kernel buffers hold got through.
        assert.is_true(sent < 40 * 2^20, sent .. " bytes sent")
        assert.is_true(srv:unread() > 0, "ember's socket has nothing unread")
        d:wait_for_log("%[limited%] batch %d+:", 5, { from = d:log_mark(), count = 2 })
        local total = 0
        for _, b in ipairs(d:batches("limited")) do
            assert.is_true(b.records <= 100 * (BATCH_S + BLOCK_S), b.line)
            total = total + b.records
        end
        assert.is_true(total > 0 and total < sent / 100)
    end)

    it("lets a source's max_rate win over streaming.receiver.maxRate", function()
        d:write_job("limited", driver.render(GENERATOR_JOB, {
            count = 500, max_rate = ", max_rate = 500",
            out = driver.quote(d:path("out/seq")), counts = driver.quote(d:path("counts")) }))
        d:start { conf = driver.conf { ["streaming.receiver.maxRate"] = 100000 } }
        check(500, 500)
    end)
end)
