-- End to end: what ember recycles between batches carries nothing over.
-- Freed blocks come back from a pool with their old buffers
-- (core/block_pool.c), a read's lines go into the receiver as one run
-- (em_receiver_push_many), and a Lua state's large allocations are kept
-- for reuse (core/bigcache.c). Each spec runs many batches, so every
-- buffer is reused many times, and checks every record exactly.

local driver = require "support.driver"


local RECORDS_JOB = [[
local ember = require "ember"
local job = ember.job { name = "rec", batch_interval = "100ms" }
job:file { path = {{dir}}, pattern = "*.log", format = "record" }
   :map(function(r)
       local v = r.value
       if #v > 1000 then v = v:sub(1, 5) .. #v .. v:sub(-3) end  -- a long line, in short
       return r.file .. " " .. r.offset .. " " .. v
   end)
   :save_as_text_files({{out}})
return job
]]

-- Each batch builds tables and strings past 128 KiB whose sizes change
-- from batch to batch (they grow, are freed, and come back smaller or
-- larger), and prints what it computed from them.
local TABLES_JOB = [[
local ember = require "ember"
local concat = table.concat
local job = ember.job { name = "big", batch_interval = "100ms" }
job:file { path = {{dir}}, pattern = "*.txt" }
   :foreach_batch(function(lines)
       local n = #lines
       if n == 0 then return end
       local k = tonumber(lines[1]:match("^(%d+)"))
       local size = 20000 + (k % 7) * 15000       -- 160 KiB to 1 MiB of array
       local t, sum = {}, 0
       for i = 1, size do t[i] = i * 2 end
       for i = 1, size do sum = sum + t[i] end
       local parts, chars = {}, 0
       for i = 1, n do parts[i] = lines[i]; chars = chars + #lines[i] end
       local s = concat(parts, ",")
       local keyed = {}
       for i = 1, size / 4 do keyed["k" .. i] = i end
       local m = 0
       for _, v in pairs(keyed) do m = m + v end
       io.write(string.format("batch %d %d %d %d %d\n", n, size, sum, #s - chars - (n - 1), m))
       io.flush()
   end)
return job
]]


local function numbered(tag, from, to, width)
    local t = {}
    for i = from, to do
        t[#t + 1] = string.format("%s-%0" .. width .. "d", tag, i)
    end
    return t
end


describe("recycled memory", function()
    local d

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    it("gives every record its own file, offset and bytes across batches of two files, a long line among them", function()
        local dir = d:path("in")
        driver.mkdir(dir)
        d:write_job("rec.lua", driver.render(RECORDS_JOB, { dir = driver.quote(dir),
                                                           out = driver.quote(d:path("out/rec")) }))
        d:start()
        d:wait_for_log("%[rec%] started from", 10)
        -- What each line should come out as: "<file> <offset> <line>".
        local want, offsets = {}, { ["a.log"] = 0, ["b.log"] = 0 }
        local function add(file, lines)
            for _, l in ipairs(lines) do
                local v = #l > 1000 and l:sub(1, 5) .. #l .. l:sub(-3) or l
                want[#want + 1] = file .. " " .. offsets[file] .. " " .. v
                offsets[file] = offsets[file] + #l + 1
            end
            driver.append_file(dir .. "/" .. file, table.concat(lines, "\n") .. "\n")
        end
        local long = string.rep("x", 200000)          -- grows the read buffer past 64 KiB
        for round = 1, 12 do
            add("a.log", numbered("a" .. round, 1, 3000, 5))
            add("b.log", numbered("b" .. round, 1, 700, 3))
            if round == 4 then
                add("a.log", { "long-" .. long .. "end" })
            end
            driver.sleep(0.12)                        -- spread over batches
        end
        d:wait_until(function()
            local n = #d:output_lines("out/rec")
            return n >= #want or false, n .. " of " .. #want .. " lines"
        end, 120, 0.2, "every line written")
        local got = d:output_lines("out/rec")
        table.sort(got)
        table.sort(want)
        assert.equal(#want, #got)
        for i = 1, #want do
            if got[i] ~= want[i] then
                assert.equal(want[i], got[i], "line " .. i)
            end
        end
        local batches = 0
        for _, b in ipairs(d:batches("rec")) do
            if b.records > 0 then batches = batches + 1 end
        end
        assert.is_true(batches >= 4, batches .. " batches with records")
    end)

    it("computes the same as plain Lua in a job whose tables pass 128 KiB and change size every batch", function()
        local dir = d:path("in")
        driver.mkdir(dir)
        d:write_job("big.lua", driver.render(TABLES_JOB, { dir = driver.quote(dir) }))
        d:start()
        d:wait_for_log("%[big%] started from", 10)
        local total = 0
        for round = 1, 15 do
            local lines = {}
            for i = 1, 50 + round * 20 do
                lines[i] = string.format("%d-line-%04d", round, i)
            end
            total = total + #lines
            driver.append_file(dir .. "/in.txt", table.concat(lines, "\n") .. "\n")
            driver.sleep(0.15)
        end
        local function outs()
            local t = {}
            for n, size, sum, len, m in d:stdout():gmatch("batch (%d+) (%d+) (%d+) (%d+) (%d+)\n") do
                t[#t + 1] = { tonumber(n), tonumber(size), tonumber(sum), tonumber(len), tonumber(m) }
            end
            return t
        end
        d:wait_until(function()
            local n = 0
            for _, o in ipairs(outs()) do n = n + o[1] end
            return n >= total or false, n .. " of " .. total .. " lines"
        end, 120, 0.2, "every line in a batch")
        local got = outs()
        assert.is_true(#got >= 5, #got .. " batches")
        local seen = 0
        for i, o in ipairs(got) do
            local n, size, sum, len, m = o[1], o[2], o[3], o[4], o[5]
            seen = seen + n
            assert.equal(size * (size + 1), sum, "batch " .. i .. ": the sum over its array")
            local q = size / 4
            assert.equal(q * (q + 1) / 2, m, "batch " .. i .. ": the sum over its keyed table")
            assert.equal(0, len, "batch " .. i .. ": its joined lines, less their bytes and commas")
        end
        assert.equal(total, seen)
    end)
end)
