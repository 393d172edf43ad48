-- End to end: text lines from a TCP server through ember's socket source,
-- flat_map / filter / map / reduce_by_key, into save_as_text_files.

local driver = require "support.driver"
local tcp = require "support.tcp"


local JOB = [[
local ember = require "ember"
local job = ember.job { name = "wordcount", batch_interval = "300ms" }

job:socket { host = "127.0.0.1", port = {{port}}, reconnect_delay = "100ms" }
   :flat_map(function(line)
       local words = {}
       for w in line:gmatch("%a+") do
           words[#words + 1] = w:lower()
       end
       return words
   end)
   :filter(function(w) return #w > 2 end)          -- drops "a", "of", "to"...
   :map(function(w) return w, 1 end)
   :reduce_by_key(function(a, b) return a + b end)
   :save_as_text_files({{out}})

return job
]]

local VOCABULARY = { "Spark", "ember", "stream", "batch", "of", "a", "to", "block",
                     "receiver", "LuaJIT", "window", "KAFKA", "redis", "it", "record" }


-- Deterministic text: n lines of 1..12 words, mixed case and punctuation.
local function make_text(n, seed)
    local x = seed
    local function rand(m)
        x = (x * 1103515245 + 12345) % 2147483648
        return x % m
    end
    local lines = {}
    for i = 1, n do
        local words = {}
        for j = 1, 1 + rand(12) do
            words[j] = VOCABULARY[1 + rand(#VOCABULARY)]
        end
        lines[i] = table.concat(words, rand(3) == 0 and ", " or " ") .. (rand(4) == 0 and "." or "")
    end
    return lines
end


-- What the job must count: words of three letters or more, lower-cased.
local function expected_counts(lines)
    local counts, total = {}, 0
    for _, line in ipairs(lines) do
        for w in line:gmatch("%a+") do
            if #w > 2 then
                w = w:lower()
                counts[w] = (counts[w] or 0) + 1
                total = total + 1
            end
        end
    end
    return counts, total
end


-- Sums the per-batch counts of every output file; checks each file holds
-- each word once (reduce_by_key made one pair per key per batch).
local function summed_counts(d, prefix)
    local counts, total = {}, 0
    for _, f in ipairs(d:output_files(prefix)) do
        local seen = {}
        for _, line in ipairs(f.lines) do
            local w, n = line:match("^(.-)\t(%d+)$")
            assert(w, "not a 'word<TAB>count' line in " .. f.path .. ": " .. line)
            assert(not seen[w], "word '" .. w .. "' twice in " .. f.path)
            seen[w] = true
            counts[w] = (counts[w] or 0) + tonumber(n)
            total = total + tonumber(n)
        end
    end
    return counts, total
end


describe("a word count over a socket", function()
    local d, srv

    before_each(function()
        d = driver.new()
        srv = d:own(tcp.server())
        d:write_job("wordcount", driver.render(JOB, {
            port = srv.port, out = driver.quote(d:path("out/counts")) }))
        d:start()
        srv:accept(10)
    end)

    after_each(function()
        d:stop()
    end)

    local function wait_for_total(total, what)
        return d:wait_until(function()
            local counts, n = summed_counts(d, "out/counts")
            if n >= total then
                return counts, n
            end
            return false, n .. " of " .. total .. " words counted"
        end, 15, 0.05, what)
    end

    -- After the counts add up, two more batches must pass without a word
    -- more: nothing is counted twice or made up.
    local function settle()
        local mark = d:log_mark()
        d:wait_for_log("%[wordcount%] batch %d+:", 5, { from = mark, count = 2 })
    end

    it("counts every word of every line sent, exactly", function()
        local lines = make_text(2000, 7)
        local want, total = expected_counts(lines)
        -- In several writes, so the words spread over several batches.
        for i = 1, #lines, 250 do
            srv:send_lines({ unpack(lines, i, math.min(i + 249, #lines)) })
        end
        wait_for_total(total, "every word to be counted")
        settle()
        local got, n = summed_counts(d, "out/counts")
        assert.equal(total, n)
        assert.same(want, got)
        assert.is_true(#d:output_files("out/counts") >= 1)
    end)

    it("writes one file per non-empty batch, one 'word<TAB>count' line per word", function()
        srv:send_lines({ "the quick brown fox", "The Fox jumps" })
        local counts = wait_for_total(7, "the seven words to be counted")
        settle()
        assert.same({ the = 2, quick = 1, brown = 1, fox = 2, jumps = 1 }, counts)
        local files = d:output_files("out/counts")
        for _, f in ipairs(files) do
            assert.is_true(#f.lines > 0, f.path .. " is empty")
            assert.truthy(f.path:match("/counts%-%d+$"), f.path)
        end
        -- Batches without records write nothing: batches ran, files did not follow.
        assert.is_true(#d:batches("wordcount") > #files)
    end)

    it("joins a line that arrives in several TCP writes", function()
        srv:send("ember str")
        srv:wait_read(5)
        -- Wait for a batch to pass with the half line pending.
        local mark = d:log_mark()
        d:wait_for_log("%[wordcount%] batch %d+:", 5, { from = mark, count = 2 })
        srv:send("eams records\n")
        local counts = wait_for_total(3, "the joined line to be counted")
        settle()
        assert.same({ ember = 1, streams = 1, records = 1 }, counts)
    end)

    it("reconnects after the server drops the connection and loses no line after it", function()
        srv:send_lines({ "before the drop" })
        wait_for_total(3, "the words sent before the drop")
        srv:close_client()
        d:wait_for_log("socket 127%.0%.0%.1:%d+: connection closed by peer", 5)
        srv:accept(10)
        d:wait_for_log("socket 127%.0%.0%.1:%d+: connected", 5, { count = 2 })
        srv:send_lines({ "after the drop", "after again" })
        local counts = wait_for_total(8, "the words sent after the reconnection")
        settle()
        assert.same({ before = 1, the = 2, drop = 2, after = 2, again = 1 }, counts)
    end)
end)
