-- End to end: a job behind its source runs its batches back to back
-- (catch-up batches, docs/internals.md "Read-ahead") instead of one per
-- batch interval, every record once; a job whose results count batches of
-- the interval (a processing-time window) is still cut on its interval.

local driver = require "support.driver"


local LINES = 300000

-- Each batch prints its time and count. 20 s batches: a batch whose time
-- is not a multiple of 20 s is a catch-up batch. 2 us a record: a slice of
-- work (100 ms) is about 50,000 records, a sixth of the file.
local COUNT_JOB = [[
local ember = require "ember"
local clock = os.clock
local job = ember.job { name = "backlog", batch_interval = "20s" {{opts}} }

job:file { path = {{dir}}, pattern = "*.txt" }
   :map(function(line)
       local t = clock() + 0.000002
       while clock() < t do end
       return line
   end)
   :count()
   :foreach_batch(function(records, info)
       io.write("batch ", info.time, " ", records[1] or 0, "\n")
       io.flush()
   end)

return job
]]

local WINDOW_JOB = [[
local ember = require "ember"
local job = ember.job { name = "windowed", batch_interval = "500ms" }

local lines = job:file { path = {{dir}}, pattern = "*.txt" }
lines:count_by_window("1s", "500ms")
   :foreach_batch(function(records, info)
       io.write("window ", info.time, " ", records[1] or 0, "\n")
       io.flush()
   end)
lines:count()
   :foreach_batch(function(records, info)
       io.write("batch ", info.time, " ", records[1] or 0, "\n")
       io.flush()
   end)

return job
]]


local function write_input(d)
    local dir = d:path("in")
    driver.mkdir(dir)
    local t = {}
    for i = 1, LINES do t[i] = string.format("line-%07d", i) end
    driver.write_file(dir .. "/big.txt", table.concat(t, "\n") .. "\n")
    return dir
end

-- { { time=, count= } ... } of the lines "<tag> <time> <count>" on stdout.
local function printed(d, tag)
    local out = {}
    for t, n in d:stdout():gmatch(tag .. " (%d+) (%d+)\n") do
        out[#out + 1] = { time = tonumber(t), count = tonumber(n) }
    end
    return out
end

local function total(list)
    local n = 0
    for _, b in ipairs(list) do n = n + b.count end
    return n
end


describe("catch-up batches", function()
    local d

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    it("read a backlog in batches back to back, not one a batch interval, every line once", function()
        local dir = write_input(d)
        d:write_job("backlog.lua", driver.render(COUNT_JOB, { dir = driver.quote(dir), opts = "" }))
        d:start()
        -- The tail of the file (less than a slice) waits for the interval.
        d:wait_until(function()
            local n = total(printed(d, "batch"))
            return n >= LINES or false, n .. " of " .. LINES .. " lines"
        end, 150, 0.1, "every line counted")
        local batches = printed(d, "batch")
        assert.equal(LINES, total(batches))
        local early = 0
        for i, b in ipairs(batches) do
            if b.count > 0 and b.time % 20000 ~= 0 then early = early + 1 end
            if i > 1 then
                assert.is_true(b.time > batches[i - 1].time, "batch times go up: "
                               .. batches[i - 1].time .. " then " .. b.time)
            end
        end
        -- the first is cut once half the floor is read, the others once a
        -- slice of work is ready: several before any interval ends
        assert.is_true(early >= 3, early .. " catch-up batches of " .. #batches)
        assert.is_nil(d:log():find("memory.max reached", 1, true))
    end)

    it("is off with catch_up = false: the batches come on the interval", function()
        local dir = write_input(d)
        d:write_job("backlog.lua", driver.render(COUNT_JOB:gsub('"20s"', '"1s"'),
                                                 { dir = driver.quote(dir), opts = ", catch_up = false" }))
        d:start()
        d:wait_until(function()
            local n = total(printed(d, "batch"))
            return n >= LINES or false, n .. " of " .. LINES .. " lines"
        end, 120, 0.1, "every line counted")
        local batches = printed(d, "batch")
        assert.equal(LINES, total(batches))
        for _, b in ipairs(batches) do
            assert.equal(0, b.time % 1000, "batch time " .. b.time)
        end
    end)

    it("leaves a job with a processing-time window on its interval, its windows exact", function()
        local dir = write_input(d)
        d:write_job("windowed.lua", driver.render(WINDOW_JOB, { dir = driver.quote(dir) }))
        d:start()
        d:wait_until(function()
            local n = total(printed(d, "batch"))
            return n >= LINES or false, n .. " of " .. LINES .. " lines"
        end, 120, 0.1, "every line counted")
        local batches, windows = printed(d, "batch"), printed(d, "window")
        assert.equal(LINES, total(batches))
        -- the window of two batches is the sum of the batch and the one before
        local per = {}
        for _, b in ipairs(batches) do
            assert.equal(0, b.time % 500, "batch time " .. b.time)
            per[b.time] = b.count
        end
        for _, w in ipairs(windows) do
            assert.equal(0, w.time % 500, "window time " .. w.time)
            assert.equal((per[w.time] or 0) + (per[w.time - 500] or 0), w.count,
                         "window ending " .. w.time)
        end
    end)

    it("refuses catch_up = true beside a processing-time window, naming the line", function()
        local dir = write_input(d)
        local src = WINDOW_JOB:gsub('batch_interval = "500ms"', 'batch_interval = "500ms", catch_up = true')
        d:write_job("windowed.lua", driver.render(src, { dir = driver.quote(dir) }))
        local code, out, err = d:exec({ "check", d.jobs_dir .. "/windowed.lua" })
        assert.matches("windowed.lua:2: job 'windowed': catch_up = true cannot go with a "
                       .. "processing%-time window", out .. err)
        assert.is_not.equal(0, code)
    end)
end)
