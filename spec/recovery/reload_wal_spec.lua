-- Recovery across a reload: a changed job whose source options changed
-- (max_rate here) gets a new receiver, writing to the same write-ahead
-- log folder as the old one (the folder goes by the source's position).
-- Every record either receiver read must stay in the log until the batch
-- holding it succeeded, so that a kill -9 after the reload loses nothing
-- that was read.

local driver = require "support.driver"
local rec = require "support.recovery"


-- v1 lags: each batch with records takes half a second, so batches of
-- the old version are still waiting when the new version takes over.
local V1 = [[
local ember = require "ember"
local socket = require "socket"
local job = ember.job { name = "rw", batch_interval = "200ms" }

job:socket { host = "127.0.0.1", port = {{port}}, max_rate = 100000 }
   :save_as_text_files({{out}})
   :foreach_batch(function(records)
       if #records == 0 then return end
       local t = socket.gettime() + 0.5
       while socket.gettime() < t do end
   end)

return job
]]

-- v2 changes the source's options (a new receiver) and runs no batch for
-- an hour: what it reads stays in its write-ahead log.
local V2 = [[
local ember = require "ember"
local job = ember.job { name = "rw", batch_interval = {{interval}} }

job:socket { host = "127.0.0.1", port = {{port}}, max_rate = 90000 }
   :save_as_text_files({{out}})

return job
]]


-- Records in the log's segments: { ["a"] = n, ["b"] = n } by first letter.
local function logged(dir)
    local counts = {}
    for _, name in ipairs(rec.list_dir(dir) or {}) do
        if name:match("%.wal$") then
            local bytes = rec.read_bytes(dir .. "/" .. name) or ""
            -- value length at payload offset 20; the value follows the 32 fixed bytes
            local pos = 1
            while pos + 12 + 32 <= #bytes and bytes:sub(pos, pos + 3) == "EMW1" do
                local b1, b2, b3, b4 = bytes:byte(pos + 4, pos + 7)
                local plen = b1 + b2 * 256 + b3 * 65536 + b4 * 16777216
                local v = bytes:sub(pos + 12 + 32, pos + 12 + 32)
                counts[v] = (counts[v] or 0) + 1
                pos = pos + 12 + plen
            end
        end
    end
    return counts
end


describe("a reload that restarts a source, with the write-ahead log", function()
    local d, a, b

    before_each(function()
        d = driver.new()
        a = d:own(rec.sender { prefix = "a" })
    end)

    after_each(function()
        d:stop()
    end)

    it("keeps every record either receiver read in the log until its batch is done", function()
        local out = driver.quote(d:path("out/rw"))
        local conf = driver.conf { ["streaming.receiver.writeAheadLog.enable"] = "true" }
        local wal = rec.wal_dir(d:path("checkpoint/rw"), 1, "socket")

        d:write_job("rw", driver.render(V1, { port = a:port(), out = out }))
        d:start { conf = conf }
        a:accept(10)
        a:pump(0.5, 4000)
        -- The new receiver connects to a server of its own: "a<n>" lines
        -- went to the old receiver, "b<n>" go to the new one.
        b = d:own(rec.sender { prefix = "b" })
        d:write_job("rw", driver.render(V2, { port = b:port(), out = out, interval = 3600 }))
        d:signal("HUP")
        -- The old receiver keeps reading until the swap.
        d:wait_until(function()
            a:pump(0.02, 4000)
            return #d:log_lines("now running the new version", { plain = true }) > 0
        end, 10, 0, "the new version to take over")
        b:accept(10)
        b:pump(0.5, 4000)
        b:flush(10)
        b:wait_read(10)
        local sent_b = b.conn.last
        -- The old version's batches finish and delete their segments.
        d:wait_until(function()
            local c = logged(wal)
            return not c.a, (c.a or 0) .. " a-records still logged"
        end, 20, 0.05, "the old version's batches to be done")
        local in_log = logged(wal).b or 0

        -- kill -9, then a version that runs batches replays the log.
        d:signal("KILL")
        d:wait_exit(10)
        local c = d:own(rec.sender())
        d:write_job("rw", driver.render(V2, { port = c:port(), out = out,
                                              interval = driver.quote("200ms") }))
        rec.restart(d, { conf = conf })
        c:accept(10)
        d:wait_for_log("write%-ahead log recovery handed over", 10)
        d:wait_for_log("%[rw%] batch %d+: 0 records", 10, { count = 2 })

        local got = {}
        for _, line in ipairs(d:output_lines("out/rw")) do
            local n = line:match("^b(%d+)$")
            if n then
                got[tonumber(n)] = true
            end
        end
        local missing = {}
        for n = 1, sent_b do
            if not got[n] then
                missing[#missing + 1] = n
            end
        end
        assert.equal(0, #missing, string.format(
            "%d of the %d b-records ember had read were lost (first b%s); the log held %d of "
            .. "them after the old version's batches were done", #missing, sent_b,
            tostring(missing[1]), in_log))
    end)
end)
