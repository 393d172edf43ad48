-- End to end: keyed state in the driver.
--
-- Across a SIGHUP reload: a job counts a paced sequence 1..N per key
-- (n % 5) with map_with_state and writes every key's state after each
-- batch. The script changes mid-stream:
--   same state_version      the new version goes on counting from the old counts
--   new version + migrate   the counts are converted (a number becomes { n = })
--   a migrate that raises   the old version keeps running and counting, the
--                           log names the migrate's file and line
--   no stateful operator    the old counts are archived (readable, exactly
--                           the last ones v1 wrote), not left live
-- Whatever happened, the final counts are exactly those of 1..N: no record
-- lost or counted twice across the swap.
--
-- Timeouts: keys idle for the timeout get one last call, then are gone.

local driver = require "support.driver"


local N = 600

local JOB = [[
local ember = require "ember"
local job = ember.job { name = "tally", batch_interval = "200ms" {{options}} }
local state_file = {{state_file}}

local m = job:generator { kind = "sequence", rate = 200, count = {{n}} }
  :map(function(n) return "k" .. (tonumber(n) % 5), 1 end)
  :map_with_state { name = "counts", fn = function(key, one, state)
      {{update}}
  end }
m:foreach_batch(function() end)
m:state_snapshots():foreach_batch(function(all, info)
    local t = {}
    for i, p in ipairs(all) do
        local v = p[2]
        t[i] = p[1] .. " " .. (type(v) == "table" and ("n=" .. v.n) or tostring(v))
    end
    table.sort(t)
    local f = assert(io.open(state_file .. ".tmp", "w"))
    f:write({{tag}}, " ", info.batch_id, "\n", table.concat(t, "\n"), "\n")
    f:close()
    assert(os.rename(state_file .. ".tmp", state_file))
end)
return job
]]

local COUNT = [[state:set((state:get() or 0) + one)]]
local COUNT_TABLE = [[local s = state:get() or { n = 0 }
      s.n = s.n + one
      state:set(s)]]


describe("keyed state across a reload", function()
    local d

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    local function write(tag, options, update)
        return d:write_job("tally", driver.render(JOB, {
            options = options and (", " .. options) or "", n = N, tag = driver.quote(tag),
            state_file = driver.quote(d:path("state.txt")), update = update or COUNT }))
    end

    -- The state file: tag of the version that wrote it, batch id, key -> count.
    local function state()
        local s = driver.read_file(d:path("state.txt"))
        if not s then
            return nil
        end
        local lines = driver.lines(s)
        local tag, id = (lines[1] or ""):match("^(%S+) (%d+)$")
        local counts, total = {}, 0
        for i = 2, #lines do
            local k, v = lines[i]:match("^(%S+) (.+)$")
            if k then
                counts[k] = v
                total = total + tonumber(v:match("%d+"))
            end
        end
        return { tag = tag, id = tonumber(id), counts = counts, total = total }
    end

    local function wait_total(at_least, what)
        local st
        d:wait_until(function()
            st = state()
            return st and st.total >= at_least, st and st.total or "no state yet"
        end, 30, 0.05, what)
        return st
    end

    -- What the counts of 1..N are, rendered as the job renders them.
    local function expected(as_table)
        local want = {}
        for k = 0, 4 do
            local c = 0
            for n = 1, N do
                if n % 5 == k then c = c + 1 end
            end
            want["k" .. k] = as_table and ("n=" .. c) or tostring(c)
        end
        return want
    end

    -- Waits for the source to end and one more batch, then stops ember.
    local function finish()
        d:wait_for_log("%[tally%].-source exhausted", 30)
        local st = wait_total(N, "all " .. N .. " records counted")
        driver.sleep(0.5)                       -- a few empty batches more
        d:signal("TERM")
        assert.equal(0, d:wait_exit(20))
        return state() or st
    end

    it("keeps the counts when the new version has the same state_version", function()
        write("v1", "state_version = 1")
        d:start()
        wait_total(100, "100 records counted by v1")
        write("v2", "state_version = 1")
        d:signal("HUP")
        local st = finish()
        assert.equal("v2", st.tag)
        assert.same(expected(false), st.counts)
    end)

    it("converts the counts with migrate when state_version changes", function()
        write("v1", "state_version = 1")
        d:start()
        wait_total(100, "100 records counted by v1")
        write("v2", [[state_version = 2, migrate = function(old, v)
            local counts = {}
            for k, n in pairs(old.counts) do counts[k] = { n = n } end
            return { counts = counts }
        end]], COUNT_TABLE)
        d:signal("HUP")
        local st = finish()
        assert.equal("v2", st.tag)
        assert.same(expected(true), st.counts)
        assert.is_truthy(d:log():find("state restored", 1, true))
    end)

    it("keeps the state's size in the batches, the job's API and /metrics", function()
        local http = require "support.http"
        write("v1", "state_version = 1")
        d:start()
        wait_total(N, "all " .. N .. " records counted")
        local port = d:http_port()
        -- five keys "k0".."k4" (2 + 2 bytes each) with number values (9)
        local job = d:wait_until(function()
            local j = http.json(port, "/api/v1/jobs/tally")
            return j.stateSize == 65 and j, j.stateSize
        end, 20, 0.05, "stateSize in the job's API")
        assert.equal(65, job.stateSize)
        local batches = http.json(port, "/api/v1/jobs/tally/batches")
        assert.equal(65, batches[1].stateBytes)
        assert.is_true(batches[1].commitTime >= 0)
        local _, metrics = http.request(port, "GET", "/metrics")
        assert.truthy(metrics:find('ember_job_state_bytes{job="tally"} 65', 1, true), metrics)
        d:signal("TERM")
        assert.equal(0, d:wait_exit(20))
    end)

    it("archives the state when the new version has no stateful operator", function()
        write("v1", "state_version = 1")
        d:start()
        wait_total(100, "100 records counted by v1")
        d:write_job("tally", [[
local ember = require "ember"
local job = ember.job { name = "tally", batch_interval = "200ms", state_version = 1 }
job:generator { kind = "sequence", rate = 200, count = 10 }
  :foreach_batch(function() end)
return job
]])
        d:signal("HUP")
        d:wait_for_log("%[tally%] state of operator 'counts' archived in .- %(the job has no "
                       .. "stateful operator now%)", 30)
        local last = state()                    -- v1's last batch, committed before the swap
        assert.equal("v1", last.tag)
        local root = d.checkpoint_dir .. "/tally/state"
        local files = require "ember.state_files"
        local format = require "ember.state_format"
        local names, is_dir = files.list(root)
        local archived, live
        for _, name in ipairs(names) do
            if is_dir[name] and name:find("^archive%-") then
                archived = root .. "/" .. name .. "/counts/p0"
            elseif is_dir[name] then
                live = root .. "/" .. name
            end
        end
        assert.truthy(archived, "no archive folder in " .. root)
        assert.truthy(live, "no live folder in " .. root)
        assert.is_false(files.exists(live .. "/counts"))   -- not kept live
        local committed = assert(format.load_dir(archived, last.id, false))
        local counts = {}
        for k, v in pairs(committed) do
            counts[k] = tostring(v)
        end
        assert.same(last.counts, counts)
        d:signal("TERM")
        assert.equal(0, d:wait_exit(20))
    end)

    it("keeps the old version running when the new version's migrate raises", function()
        write("v1", "state_version = 1")
        d:start()
        wait_total(100, "100 records counted by v1")
        write("v2", [[state_version = 2, migrate = function(old, v)
            error("counts of version " .. tostring(v) .. " cannot be converted")
        end]])
        d:signal("HUP")
        d:wait_for_log("tally%.lua:%d+: counts of version 1 cannot be converted", 20)
        local st = finish()
        assert.equal("v1", st.tag)
        assert.same(expected(false), st.counts)
    end)
end)


describe("map_with_state timeouts in the driver", function()
    local d

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    it("gives each idle key one last call, then removes it", function()
        d:write_job("sessions", driver.render([[
local ember = require "ember"
local job = ember.job { name = "sessions", batch_interval = "200ms" }
local out, left = {{out}}, {{left}}
local m = job:generator { kind = "sequence", rate = 100, count = 50 }
  :map(function(n) return "k" .. (tonumber(n) % 5), 1 end)
  :map_with_state { timeout = "1s", fn = function(key, one, state)
      if state:is_timing_out() then
          return key .. " " .. state:get()
      end
      state:set((state:get() or 0) + one)
  end }
m:foreach_batch(function(ended)
    if #ended > 0 then
        local f = assert(io.open(out, "a"))
        f:write(table.concat(ended, "\n"), "\n")
        f:close()
    end
end)
m:state_snapshots():foreach_batch(function(all)
    local f = assert(io.open(left, "w"))
    f:write(#all, "\n")
    f:close()
end)
return job
]], { out = driver.quote(d:path("ended.txt")), left = driver.quote(d:path("left.txt")) }))
        d:start()
        d:wait_for_log("%[sessions%].-source exhausted", 30)
        local lines
        d:wait_until(function()
            lines = d:file_lines("ended.txt")
            return #lines >= 5, #lines .. " keys ended"
        end, 20, 0.05, "the 5 keys to time out")
        table.sort(lines)
        assert.same({ "k0 10", "k1 10", "k2 10", "k3 10", "k4 10" }, lines)
        d:wait_until(function()
            return driver.read_file(d:path("left.txt")) == "0\n"
        end, 10, 0.05, "no key left in the state")
        driver.sleep(1.5)                      -- no second last call
        assert.equal(5, #d:file_lines("ended.txt"))
        d:signal("TERM")
        assert.equal(0, d:wait_exit(20))
    end)
end)
