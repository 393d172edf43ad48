-- End to end: event-time windows across a SIGHUP reload that changes the
-- job's output code. A paced sequence 1..N gets the event time n * 10 ms
-- and is counted per key (n % 3) in 500 ms tumbling windows; each closed
-- window is appended to a file with the tag of the version that emitted
-- it. Mid-stream the script is replaced by one that writes its windows in
-- another format: the windows open at the swap are emitted by the new
-- version with the records of both versions, and every window of the
-- sequence comes out once, with its exact count.

local driver = require "support.driver"


local N = 900

local JOB = [[
local ember = require "ember"
local job = ember.job { name = "wins", batch_interval = "200ms" }
local out = {{out}}

job:generator { kind = "sequence", rate = 150, count = {{n}} }
  :event_time(function(n) return tonumber(n) * 10 end)
  :with_watermark("300ms", { idle_timeout = "1s" })
  :map(function(n) return "k" .. (tonumber(n) % 3), 1 end)
  :event_window { size = "500ms", name = "per_key" }
  :count()
  :foreach_batch(function(windows)
      local f = assert(io.open(out, "a"))
      for _, p in ipairs(windows) do
          f:write({{line}}, "\n")
      end
      f:close()
  end)
return job
]]

local V1 = [["v1 " .. p[1] .. " " .. p[2].start .. " " .. p[2].value]]
local V2 = [[string.format("v2 %s %d count=%d", p[1], p[2].start, p[2].value)]]


describe("event-time windows across a reload", function()
    local d

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    local function write(line)
        d:write_job("wins", driver.render(JOB, { n = N, line = line,
                                                  out = driver.quote(d:path("windows.txt")) }))
    end

    -- tag, key, start, count of every window written so far
    local function windows()
        local got = {}
        for _, l in ipairs(driver.lines(driver.read_file(d:path("windows.txt")) or "")) do
            local tag, k, start, n = l:match("^(v%d) (%S+) (%d+) (%d+)$")
            if not tag then
                tag, k, start, n = l:match("^(v%d) (%S+) (%d+) count=(%d+)$")
            end
            assert(tag, "a line no version wrote: " .. l)
            got[#got + 1] = { tag = tag, key = k, start = tonumber(start), n = tonumber(n) }
        end
        return got
    end

    local function expected()
        local want = {}
        for n = 1, N do
            local id = "k" .. (n % 3) .. " " .. (n * 10 - (n * 10) % 500)
            want[id] = (want[id] or 0) + 1
        end
        return want
    end

    it("keeps the open windows when the new version changes the output code", function()
        write(V1)
        d:start()
        d:wait_until(function()
            return #windows() >= 12, #windows() .. " windows"
        end, 30, 0.05, "a dozen windows closed by v1")
        write(V2)
        d:signal("HUP")
        d:wait_for_log("%[wins%].-now running the new version %(1 of 1 sources kept", 20)
        d:wait_for_log("%[wins%].-source exhausted", 40)
        local want = expected()
        local nwant = 0
        for _ in pairs(want) do nwant = nwant + 1 end
        -- the last windows close once the source is idle (1 s) and the
        -- watermark moves with processing time
        d:wait_until(function()
            return #windows() >= nwant, #windows() .. " of " .. nwant .. " windows"
        end, 30, 0.1, "every window of the sequence")
        d:signal("TERM")
        assert.equal(0, d:wait_exit(20))

        local got, seen, by = windows(), {}, { v1 = 0, v2 = 0 }
        local swap_start = math.huge
        for _, w in ipairs(got) do
            local id = w.key .. " " .. w.start
            assert.is_nil(seen[id], "window " .. id .. " emitted twice")
            seen[id] = w
            assert.equal(want[id], w.n, "window " .. id .. " (" .. w.tag .. ")")
            by[w.tag] = by[w.tag] + 1
            if w.tag == "v2" and w.start < swap_start then
                swap_start = w.start
            end
        end
        assert.equal(nwant, #got)
        assert.is_true(by.v1 >= 12 and by.v2 > 0, "v1 " .. by.v1 .. ", v2 " .. by.v2)
        -- v2's first windows were open at the swap: the watermark trails
        -- the records v1 counted, so v1 had counted part of them, and they
        -- came out whole (exact counts above)
        for _, w in ipairs(got) do
            if w.tag == "v1" then
                assert.is_true(w.start < swap_start, "v1 wrote a window after v2 began")
            end
        end
    end)
end)
