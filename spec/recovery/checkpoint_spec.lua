-- Recovery: the checkpoint file. ember writes <checkpoint.dir>/<job>/checkpoint
-- after every completed batch (temp file, fsync, rename) and keeps the one
-- before as checkpoint.1. A damaged checkpoint is logged and the previous
-- one used; both damaged, the job starts without one. ember never exits
-- over a checkpoint.

local driver = require "support.driver"
local rec = require "support.recovery"


local JOB = [[
local ember = require "ember"
local job = ember.job { name = "cp", batch_interval = "200ms", state_version = "1" }

job:generator { kind = "sequence", rate = 500 }
   :count()
   :print()

return job
]]


local function esc(s)
    return (s:gsub("%p", "%%%0"))
end


describe("the checkpoint", function()
    local d, dir, good, prev

    -- Runs the job for a few batches and stops it gracefully, leaving a
    -- checkpoint and its previous version.
    local function prime()
        d:write_job("cp", JOB)
        d:start()
        d:wait_for_log("%[cp%] batch %d+: [1-9]%d* records", 10, { count = 3 })
        d:signal("TERM")
        assert.equal(0, d:wait_exit(10))
        good = rec.parse_checkpoint(rec.read_bytes(dir .. "/checkpoint"))
        prev = rec.parse_checkpoint(rec.read_bytes(dir .. "/checkpoint.1"))
    end

    -- Starts ember on the damaged files and waits until the job completed
    -- two batches after start-up.
    local function restart_and_run()
        rec.restart(d)
        d:wait_for_log("%[cp%] batch %d+:", 10, { count = 2 })
        assert.is_true(d:running())
    end

    before_each(function()
        d = driver.new()
        dir = d:path("checkpoint/cp")
        prime()
    end)

    after_each(function()
        d:stop()
    end)

    it("is written in the documented format, checksummed, with the previous one beside it", function()
        assert.is_true(good.crc_ok)
        assert.equal(2, good.format)
        assert.equal("cp", good.job)
        assert.equal("1", good.state_version)
        assert.is_true(good.batches >= 3)
        assert.is_true(good.batch_id >= good.batches)
        assert.is_true(prev.crc_ok)
        assert.equal(good.batches - 1, prev.batches)
        assert.equal(good.batch_id - 1, prev.batch_id)
        assert.is_true(prev.last_batch < good.last_batch)
        -- Rendered the same way, byte for byte.
        assert.equal(rec.checkpoint_text(good), rec.read_bytes(dir .. "/checkpoint"))
        assert.is_nil(rec.read_bytes(dir .. "/checkpoint.tmp"))
    end)

    local damage = {
        { "garbage bytes", "no checksum %(torn write%?%)", function(text)
            return ("\0\255garbage\1\2\3"):rep(40) end },
        { "a file truncated mid-way", "no checksum %(torn write%?%)", function(text)
            return text:sub(1, 40) end },
        { "an empty file", "no checksum %(torn write%?%)", function()
            return "" end },
        { "a wrong crc", "checksum mismatch", function(text)
            return text:gsub("crc32 (%x+)", function(h)
                return "crc32 " .. string.format("%08x", (tonumber(h, 16) + 1) % 2 ^ 32)
            end) end },
        { "a changed byte under a right-looking crc line", "checksum mismatch", function(text)
            return (text:gsub("last_batch (%d)", "last_batch 9")) end },
    }

    for _, case in ipairs(damage) do
        local what, why, corrupt = case[1], case[2], case[3]

        it("damaged (" .. what .. ") is logged and the previous one is used", function()
            local path = dir .. "/checkpoint"
            rec.write_bytes(path, corrupt(rec.read_bytes(path)))
            restart_and_run()
            d:wait_for_log("checkpoint " .. esc(path) .. " is damaged %(" .. why
                           .. "%); using the previous one", 1)
            d:wait_for_log(string.format("%%[cp%%] checkpoint: last completed batch %d %%(%d "
                                         .. "batches%%)", prev.last_batch, prev.batches), 1)
            -- The job goes on from checkpoint.1, and writes good checkpoints again.
            local now = rec.parse_checkpoint(rec.read_bytes(path))
            assert.is_true(now.crc_ok)
            assert.is_true(now.batches > prev.batches)
            assert.is_true(now.last_batch > good.last_batch)
            assert.equal(0, #d:log_lines("damaged too", { plain = true }))
            d:signal("TERM")
            assert.equal(0, d:wait_exit(10))
        end)
    end

    it("damaged, with a damaged previous one, lets the job start without one", function()
        local path, path1 = dir .. "/checkpoint", dir .. "/checkpoint.1"
        rec.write_bytes(path, rec.read_bytes(path):sub(1, 30))
        rec.write_bytes(path1, "\0\0\0\0")
        restart_and_run()
        d:wait_for_log("checkpoint " .. esc(path) .. " is damaged %(no checksum", 1)
        d:wait_for_log("checkpoint " .. esc(path1) .. " is damaged too %(no checksum %(torn "
                       .. "write%?%)%); starting without one", 1)
        assert.equal(0, #d:log_lines("checkpoint: last completed batch", { plain = true }))
        -- A new history starts, checksummed.
        local now = rec.parse_checkpoint(rec.read_bytes(path))
        assert.is_true(now.crc_ok)
        assert.is_true(now.batches >= 1 and now.batches < good.batches)
        assert.equal("1", now.state_version)
        d:signal("TERM")
        assert.equal(0, d:wait_exit(10))
    end)

    it("damaged, with no previous one, lets the job start without one", function()
        local path = dir .. "/checkpoint"
        rec.write_bytes(path, "ember-checkpoint 1\njob cp\n")
        assert(os.remove(dir .. "/checkpoint.1"))
        restart_and_run()
        d:wait_for_log("checkpoint " .. esc(path) .. " is damaged %(no checksum", 1)
        assert.equal(0, #d:log_lines("checkpoint: last completed batch", { plain = true }))
        local now = rec.parse_checkpoint(rec.read_bytes(path))
        assert.is_true(now.crc_ok)
        assert.is_true(now.batches < good.batches)
        d:signal("TERM")
        assert.equal(0, d:wait_exit(10))
    end)

    it("of a newer format is not read as this one", function()
        local path = dir .. "/checkpoint"
        rec.write_bytes(path, rec.checkpoint_text { format = 3, job = "cp", state_version = "1",
                                                    last_batch = 5, batches = 5 })
        restart_and_run()
        d:wait_for_log("checkpoint " .. esc(path) .. " is damaged %(format 3, this ember reads "
                       .. "1 and 2%); using the previous one", 1)
        d:wait_for_log(string.format("%%[cp%%] checkpoint: last completed batch %d",
                                     prev.last_batch), 1)
        d:signal("TERM")
        assert.equal(0, d:wait_exit(10))
    end)
end)
