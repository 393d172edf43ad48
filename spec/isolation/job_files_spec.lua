-- Isolation: only regular files in jobs/ are read, and only up to a size
-- cap. A FIFO, a symlink to /dev/zero, a folder or a huge file named
-- *.lua is a logged error for that file alone: start-up and reloads do
-- not hang, memory does not grow, and a healthy job runs on time.

local driver = require "support.driver"
local iso = require "support.isolation"

local function rss_kb(pid)
    for line in io.lines("/proc/" .. pid .. "/status") do
        local kb = line:match("^VmRSS:%s+(%d+)")
        if kb then return tonumber(kb) end
    end
end

describe("job files", function()
    local d

    before_each(function()
        d = driver.new()
        iso.write_healthy(d)
    end)

    after_each(function()
        d:stop()
    end)

    local function plant(prefix)
        assert.equal(0, os.execute("mkfifo " .. d.jobs_dir .. "/" .. prefix .. "fifo.lua"))
        assert.equal(0, os.execute("ln -s /dev/zero " .. d.jobs_dir .. "/" .. prefix .. "zero.lua"))
        assert.equal(0, os.execute("mkdir " .. d.jobs_dir .. "/" .. prefix .. "folder.lua"))
        assert.equal(0, os.execute("truncate -s 64M " .. d.jobs_dir .. "/" .. prefix .. "huge.lua"))
    end

    local function assert_refused(prefix, from)
        local dir = d.jobs_dir .. "/" .. prefix
        d:wait_for_log(dir .. "fifo.lua: not read: a FIFO, not a regular file", 20, { plain = true, from = from })
        d:wait_for_log(dir .. "zero.lua: not read: a character device, not a regular file", 20,
                       { plain = true, from = from })
        d:wait_for_log(dir .. "folder.lua: not read: a folder, not a regular file", 20,
                       { plain = true, from = from })
        d:wait_for_log(dir .. "huge.lua: not read: 67108864 bytes, more than the 4194304 a job file may have",
                       20, { plain = true, from = from })
    end

    it("at start-up, are logged errors and the healthy job runs", function()
        plant("a_")
        d:start { conf = iso.conf() }
        d:wait_for_log("running 1 jobs", 30)
        assert_refused("a_")
        local mark = d:log_mark()
        local delays = iso.wait_healthy_batches(d, 8, mark, 60)
        assert.is_true(iso.p95(delays) < iso.INTERVAL_MS, "healthy p95 " .. iso.p95(delays) .. " ms")
        assert.is_true(rss_kb(d.pid) < 100 * 1024, "RSS " .. rss_kb(d.pid) .. " kB")
        assert.is_true(iso.assert_contiguous(d) > 0)
    end)

    it("dropped in later, do not block a reload, and later reloads still work", function()
        d:start { conf = iso.conf() }
        d:wait_for_log("running 1 jobs", 30)
        plant("b_")
        local mark = d:log_mark()
        d:signal("HUP")
        assert_refused("b_", mark)
        -- a later reload still loads a new job
        d:write_job("late.lua", [[
local ember = require "ember"
local job = ember.job { name = "late", batch_interval = "500ms" }
job:generator { kind = "sequence", rate = 10 }:foreach_batch(function() end)
return job
]])
        d:signal("HUP")
        d:wait_for_log("%[late%] started from", 20, { from = mark })
        local delays = iso.wait_healthy_batches(d, 8, mark, 60)
        assert.is_true(iso.p95(delays) < iso.INTERVAL_MS, "healthy p95 " .. iso.p95(delays) .. " ms")
        assert.is_true(rss_kb(d.pid) < 100 * 1024, "RSS " .. rss_kb(d.pid) .. " kB")
        d:signal("TERM")
        assert.equal(0, d:wait_exit(30))
    end)
end)
