-- End to end: SIGHUP rescans jobs/. A new file starts, a removed one
-- stops, a changed one takes over at a batch boundary (keeping receivers
-- whose configuration is the same: no record lost or repeated), a broken one
-- leaves the running version alone, and untouched jobs never notice.

local driver = require "support.driver"


-- Numbers from a paced sequence, tagged by the job's version.
local SEQ_JOB = [[
local ember = require "ember"
{{prelude}}
local job = ember.job { name = {{name}}, batch_interval = "200ms" }

job:generator { kind = "sequence", rate = {{rate}} }
   :map(function(n) return {{tag}} .. ":" .. n end)
   :save_as_text_files({{out}})

return job
]]

-- A script that takes about half a second to load.
local SLOW_PRELUDE = [[
local socket = require "socket"
local started = socket.gettime()
while socket.gettime() - started < 0.5 do end]]


describe("reload on SIGHUP", function()
    local d

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    local function write_seq(name, tag, opts)
        opts = opts or {}
        return d:write_job(name, driver.render(SEQ_JOB, {
            name = driver.quote(name), tag = driver.quote(tag), rate = opts.rate or 200,
            prelude = opts.prelude or "", out = driver.quote(d:path("out/" .. name)) }))
    end

    -- The output of a job as { tag, number } pairs, in order.
    local function output(name)
        local t = {}
        for _, line in ipairs(d:output_lines("out/" .. name)) do
            local tag, n = line:match("^(.-):(%d+)$")
            assert(tag, "unexpected line from " .. name .. ": " .. line)
            t[#t + 1] = { tag = tag, n = tonumber(n) }
        end
        return t
    end

    -- Checks the numbers are exactly 1..#out: none lost, none repeated.
    local function assert_contiguous(out, name)
        for i, r in ipairs(out) do
            if r.n ~= i then
                local prev = out[i - 1]
                error(string.format("%s: record %d is %s:%d after %s: the sequence should "
                                    .. "be exactly 1..%d", name, i, r.tag, r.n,
                                    prev and (prev.tag .. ":" .. prev.n) or "nothing", #out), 2)
            end
        end
    end

    -- The tags in order of first appearance, checking they do not interleave.
    local function tag_runs(out)
        local runs = {}
        for _, r in ipairs(out) do
            if runs[#runs] ~= r.tag then
                runs[#runs + 1] = r.tag
            end
        end
        return runs
    end

    local function wait_output(name, n, tag)
        return d:wait_until(function()
            local c = 0
            for _, r in ipairs(output(name)) do
                if tag == nil or r.tag == tag then
                    c = c + 1
                end
            end
            return c >= n, c .. " of " .. n
        end, 10, 0.05, n .. " records" .. (tag and (" tagged " .. tag) or "") .. " from " .. name)
    end

    local function wait_batches(name, n, from)
        return d:wait_for_log("%[" .. name .. "%] batch %d+:", 10,
                              { from = from or d:log_mark(), count = n })
    end

    local function stop_gracefully()
        d:signal("TERM")
        assert.equal(0, d:wait_exit(10))
    end

    it("starts a job whose file was added", function()
        write_seq("steady", "s")
        d:start()
        wait_output("steady", 20)
        assert.same({}, output("added"))
        write_seq("added", "a")
        d:signal("HUP")
        d:wait_for_log("%[added%] started from " .. d.jobs_dir:gsub("%p", "%%%0") .. "/added%.lua", 5)
        wait_output("added", 50)
        stop_gracefully()
        assert_contiguous(output("added"), "added")
        assert_contiguous(output("steady"), "steady")
    end)

    it("switches a changed job to its new logic without losing or repeating a record", function()
        write_seq("changing", "v1")
        d:start()
        wait_output("changing", 100)
        write_seq("changing", "v2")
        d:signal("HUP")
        d:wait_for_log("%[changing%] new version loaded", 5)
        d:wait_for_log("%[changing%] now running the new version %(1 of 1 sources kept running%)", 5)
        wait_output("changing", 100, "v2")
        stop_gracefully()
        local out = output("changing")
        assert.same({ "v1", "v2" }, tag_runs(out))
        assert_contiguous(out, "changing")
    end)

    it("stops a job whose file was removed, after its last batch", function()
        write_seq("steady", "s")
        write_seq("doomed", "d")
        d:start()
        wait_output("doomed", 50)
        d:remove_job("doomed")
        d:signal("HUP")
        d:wait_for_log("%[doomed%] stopped: " .. d.jobs_dir:gsub("%p", "%%%0")
                       .. "/doomed%.lua was removed", 5)
        -- Its last batch may still be running; after two batches of the
        -- other job it is done, and nothing of it runs any more.
        wait_batches("steady", 2)
        local files = #d:output_files("out/doomed")
        local mark = d:log_mark()
        wait_batches("steady", 3, mark)
        assert.same({}, d:log_lines("%[doomed%] batch %d+:", { from = mark }))
        assert.equal(files, #d:output_files("out/doomed"))
        assert_contiguous(output("doomed"), "doomed")
        assert.is_true(d:running())
        stop_gracefully()
        assert_contiguous(output("steady"), "steady")
    end)

    it("keeps the running version when the changed file has a syntax error, naming file and line", function()
        local path = write_seq("changing", "v1")
        d:start()
        wait_output("changing", 40)
        d:write_job("changing", [[
local ember = require "ember"
local job = ember.job { name = "changing" }
job:generator { kind = "sequence" }
   :map(function(n) return n end
   :print()
return job
]])
        d:signal("HUP")
        local line = d:wait_for_log(path:gsub("%p", "%%%0") .. ":5: ", 5)
        assert.truthy(line:find(" error ", 1, true), line)
        d:wait_for_log("%[changing%] reload failed; the running version keeps running", 5)
        -- The old version goes on.
        local mark = d:log_mark()
        wait_batches("changing", 3, mark)
        local out = output("changing")
        assert.same({ "v1" }, tag_runs(out))
        assert_contiguous(out, "changing")
        assert.same({}, d:log_lines("%[changing%] now running the new version", { from = 0 }))

        -- Once fixed, the next SIGHUP takes it.
        write_seq("changing", "v2")
        d:signal("HUP")
        d:wait_for_log("%[changing%] now running the new version", 5)
        wait_output("changing", 20, "v2")
        stop_gracefully()
        out = output("changing")
        assert.same({ "v1", "v2" }, tag_runs(out))
        assert_contiguous(out, "changing")
    end)

    it("reports a new file that does not load, and starts it once fixed", function()
        write_seq("steady", "s")
        d:start()
        wait_output("steady", 10)
        local path = d:write_job("broken", [[
local ember = require "ember"
local job = ember.job { name = "broken" }
job:generator { kind = "sequence" }:map(42):print()
return job
]])
        d:signal("HUP")
        local line = d:wait_for_log(path:gsub("%p", "%%%0") .. ":3: bad argument #1 to 'map' "
                                    .. "%(function expected", 5)
        assert.truthy(line:find(" error ", 1, true), line)
        assert.is_true(d:running())
        write_seq("broken", "b")
        d:signal("HUP")
        d:wait_for_log("%[broken%] started from", 5)
        wait_output("broken", 20)
        stop_gracefully()
        assert_contiguous(output("broken"), "broken")
    end)

    it("leaves an untouched job producing every batch, without a gap, while another reloads", function()
        write_seq("steady", "s")
        write_seq("changing", "v1")
        d:start()
        wait_output("steady", 40)
        -- The new version takes half a second to load.
        write_seq("changing", "v2", { prelude = SLOW_PRELUDE })
        d:signal("HUP")
        d:wait_for_log("%[changing%] now running the new version %(1 of 1 sources kept running%)", 5)
        wait_output("changing", 40, "v2")
        wait_batches("steady", 5)
        -- Every 200ms a batch of steady, from its first to now (the batch
        -- cut at stop comes at any time).
        local batches = d:batches("steady")
        stop_gracefully()

        assert.is_true(#batches >= 8, #batches .. " batches")
        for i = 2, #batches do
            assert.equal(200, batches[i].time - batches[i - 1].time,
                         "gap between " .. batches[i - 1].line .. "\nand " .. batches[i].line)
        end
        -- steady was not touched: started once, never reloaded.
        assert.equal(1, #d:log_lines("%[steady%] started from"))
        assert.same({}, d:log_lines("%[steady%] new version"))
        assert.same({}, d:log_lines("%[steady%] now running"))
        assert_contiguous(output("steady"), "steady")
        local out = output("changing")
        assert.same({ "v1", "v2" }, tag_runs(out))
        assert_contiguous(out, "changing")
    end)

    it("starts the jobs that load at start-up and names the files that do not", function()
        write_seq("good", "g")
        d:write_job("typo", "local ember = require 'ember'\nlocal job = \n")
        -- A second file declaring a job name already taken.
        local twin = d:write_job("twin", driver.render(SEQ_JOB, {
            name = driver.quote("good"), tag = driver.quote("t"), rate = 10, prelude = "",
            out = driver.quote(d:path("out/twin")) }))
        d:start()
        d:wait_for_log(d.jobs_dir:gsub("%p", "%%%0") .. "/typo%.lua:3: ", 5)
        d:wait_for_log(twin:gsub("%p", "%%%0") .. ": job name 'good' is already used by "
                       .. d.jobs_dir:gsub("%p", "%%%0") .. "/good%.lua", 5)
        d:wait_for_log("running 1 jobs from", 5)
        wait_output("good", 20)
        assert.same({}, output("twin"))
        stop_gracefully()
        assert_contiguous(output("good"), "good")
    end)

    it("restarts the receiver of a changed source", function()
        write_seq("changing", "v1", { rate = 200 })
        d:start()
        wait_output("changing", 20)
        write_seq("changing", "v2", { rate = 300 })
        d:signal("HUP")
        d:wait_for_log("%[changing%] now running the new version %(0 of 1 sources kept running%)", 5)
        wait_output("changing", 20, "v2")
        stop_gracefully()
        -- A new generator: the v2 records start again at 1.
        local v1, v2 = {}, {}
        for _, r in ipairs(output("changing")) do
            local t = r.tag == "v1" and v1 or v2
            t[#t + 1] = r
        end
        assert_contiguous(v1, "changing v1")
        assert_contiguous(v2, "changing v2")
    end)
end)
