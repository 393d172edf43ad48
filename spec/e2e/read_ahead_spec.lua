-- End to end: a source read faster than the job processes it keeps its
-- backlog at the source. The receiver holds about what the workers process
-- in two batch intervals, or two catch-up slices (docs/internals.md,
-- "Read-ahead"), not everything it could read up to memory.max.

local driver = require "support.driver"


local LINES = 200000
local FLOOR = 65536       -- the bound's floor, and per block interval before anything
                          -- is measured (core/driver.c); batches here last one block
local POLL = 8192         -- records one poll may bring past it (core/receiver.c)

local JOB = [[
local ember = require "ember"
local clock = os.clock
local job = ember.job { name = "slow", batch_interval = "100ms" }

job:file { path = {{dir}}, pattern = "*.txt" }
   :map(function(line)
       local t = clock() + 0.00002          -- 20 us a record: at most 50,000/s
       while clock() < t do end
       return line
   end)
   :count()
   :foreach_record(function(n)
       io.write("count ", n, "\n")
       io.flush()
   end)

return job
]]


describe("read-ahead", function()
    local d

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    it("keeps a backlog in the file: batches of about what the job processes, every line once", function()
        local dir = d:path("in")
        driver.mkdir(dir)
        local t = {}
        for i = 1, LINES do t[i] = string.format("line-%07d", i) end
        driver.write_file(dir .. "/big.txt", table.concat(t, "\n") .. "\n")
        d:write_job("slow.lua", driver.render(JOB, { dir = driver.quote(dir) }))
        d:start()
        local function counted()
            local n = 0
            for c in d:stdout():gmatch("count (%d+)\n") do n = n + tonumber(c) end
            return n
        end
        d:wait_until(function()
            local n = counted()
            return n >= LINES or false, n .. " of " .. LINES .. " lines"
        end, 120, 0.1, "every line counted")
        assert.equal(LINES, counted())

        local sizes = {}
        for _, b in ipairs(d:batches("slow")) do
            if b.records > 0 then sizes[#sizes + 1] = b.records end
        end
        -- The file is read at millions of lines a second: without the bound
        -- the first batch would hold all of it.
        assert.is_true(#sizes >= 3, #sizes .. " batches with records")
        assert.is_true(sizes[1] <= FLOOR + POLL, "first batch " .. sizes[1])
        for i, n in ipairs(sizes) do
            -- two intervals at 50,000/s at most, or the floor; one poll over
            assert.is_true(n <= math.max(FLOOR, 2 * 50000 * 0.1) + POLL,
                           string.format("batch %d of %d records: %s", i, n,
                                         table.concat(sizes, " ")))
        end
        assert.is_nil(d:log():find("memory.max reached", 1, true))
    end)
end)
