-- Recovery: state_version. A changed job script keeps its checkpoint; a
-- job that declares a new state_version has its old checkpoint archived
-- under <job dir>/archive-<unix time>/, never deleted, whether the new
-- version arrives by reload (SIGHUP) or by a restart.

local driver = require "support.driver"
local rec = require "support.recovery"


local JOB = [[
local ember = require "ember"
local job = ember.job { name = "sv", batch_interval = {{interval}} {{version}} }

job:generator { kind = "sequence", rate = 200 }
   :map(function(n) return {{tag}} .. n end)
   :count()
   :print()

return job
]]


describe("state_version", function()
    local d, dir

    before_each(function()
        d = driver.new()
        dir = d:path("checkpoint/sv")
    end)

    after_each(function()
        d:stop()
    end)

    local function write(version, tag, interval)
        d:write_job("sv", driver.render(JOB, { version = version and (", state_version = "
                                                                      .. driver.quote(version)) or "",
                                               tag = driver.quote(tag or "v"),
                                               interval = driver.quote(interval or "200ms") }))
    end

    local function checkpoint()
        return rec.parse_checkpoint(rec.read_bytes(dir .. "/checkpoint"))
    end

    -- Waits until the checkpoint says at least n batches (of version v).
    local function wait_batches(n, v)
        return d:wait_until(function()
            local cp = checkpoint()
            if cp and cp.crc_ok and cp.batches >= n and (not v or cp.state_version == v) then
                return cp
            end
            return false, cp and (cp.state_version .. ", " .. cp.batches .. " batches") or "none"
        end, 10, 0.02, n .. " batches in the checkpoint")
    end

    local function archives()
        local out = {}
        for _, name in ipairs(rec.list_dir(dir) or {}) do
            if name:match("^archive%-%d+$") or name:match("^archive%-%d+%.%d+$") then
                out[#out + 1] = name
            end
        end
        return out
    end

    it("archives the old checkpoint when a reload brings a new state_version", function()
        write("1")
        d:start()
        local before = wait_batches(3, "1")
        write("2")
        d:signal("HUP")
        local line = d:wait_for_log("%[sv%] state_version '1' %-> '2': previous checkpoint "
                                    .. "archived in ", 10)
        local moved = line:match("archived in (%S+)$")
        assert.equal(dir, moved:match("^(.*)/archive%-%d+$"))
        local t = tonumber(moved:match("archive%-(%d+)$"))
        assert.is_true(math.abs(t - os.time()) < 60)
        -- The archived checkpoint is the last one of version 1.
        local old = rec.parse_checkpoint(rec.read_bytes(moved .. "/checkpoint"))
        assert.is_true(old.crc_ok)
        assert.equal("1", old.state_version)
        assert.is_true(old.batches >= before.batches)
        assert.is_true(rec.parse_checkpoint(rec.read_bytes(moved .. "/checkpoint.1")).crc_ok)
        -- A new history begins for version 2.
        local now = wait_batches(1, "2")
        assert.is_true(now.batches < old.batches)
        assert.is_true(now.last_batch > old.last_batch)
        assert.is_true(d:running())
    end)

    it("archives the old checkpoint when ember restarts with a new state_version", function()
        write("1")
        d:start()
        local before = wait_batches(3, "1")
        d:signal("TERM")
        assert.equal(0, d:wait_exit(10))
        local last = checkpoint()
        assert.is_true(last.batches >= before.batches)

        write("2")
        rec.restart(d)
        d:wait_for_log(string.format("%%[sv%%] checkpoint: last completed batch %d %%(%d batches%%)",
                                     last.last_batch, last.batches), 10)
        local line = d:wait_for_log("state_version '1' %-> '2': previous checkpoint archived in ",
                                    10)
        local moved = line:match("archived in (%S+)$")
        assert.same({ moved:match("([^/]+)$") }, archives())
        assert.equal(rec.checkpoint_text(last), rec.read_bytes(moved .. "/checkpoint"))
        local now = wait_batches(1, "2")
        assert.is_true(now.batches < last.batches)
    end)

    it("keeps the checkpoint of a changed script with the same state_version", function()
        write("1", "a")
        d:start()
        local before = wait_batches(3, "1")
        write("1", "b")
        d:signal("HUP")
        d:wait_for_log("%[sv%] first batch of the new version done", 10)
        local after = wait_batches(before.batches + 3, "1")
        assert.same({}, archives())
        assert.equal(0, #d:log_lines("archived", { plain = true }))
        -- And across a restart of the changed script.
        d:signal("TERM")
        assert.equal(0, d:wait_exit(10))
        local last = checkpoint()
        write("1", "c")
        rec.restart(d)
        d:wait_for_log(string.format("checkpoint: last completed batch %d", last.last_batch), 10)
        wait_batches(last.batches + 2, "1")
        assert.same({}, archives())
        assert.is_true(after.batches > before.batches)
    end)

    it("archives the checkpoint of a job that declares a state_version for the first time", function()
        write(nil)
        d:start()
        local before = wait_batches(2, "-")
        write("1")
        d:signal("HUP")
        local line = d:wait_for_log("state_version '' %-> '1': previous checkpoint archived in ", 10)
        local old = rec.parse_checkpoint(rec.read_bytes(line:match("archived in (%S+)$")
                                                        .. "/checkpoint"))
        assert.equal("-", old.state_version)
        assert.is_true(old.batches >= before.batches)
        assert.is_true(wait_batches(1, "1").batches < old.batches)
    end)

    it("keeps every archive when the state_version changes twice within a second", function()
        write("1", "v", "100ms")
        d:start()
        wait_batches(2, "1")
        -- Archives are named by the second: start right after one begins,
        -- so that both fall into the same second.
        local socket = require "socket"
        d:wait_until(function() return socket.gettime() % 1 < 0.05 end, 2, 0.005,
                     "the start of a second")
        write("2", "v", "100ms")
        d:signal("HUP")
        d:wait_for_log("state_version '1' %-> '2'", 10)
        wait_batches(1, "2")
        write("3", "v", "100ms")
        d:signal("HUP")
        d:wait_for_log("state_version '2' %-> '3'", 10)
        -- Each archive holds its own version's last checkpoint.
        local versions = {}
        for _, name in ipairs(archives()) do
            local cp = rec.parse_checkpoint(rec.read_bytes(dir .. "/" .. name .. "/checkpoint"))
            versions[#versions + 1] = cp and cp.state_version
        end
        table.sort(versions)
        assert.same({ "1", "2" }, versions)
    end)
end)
