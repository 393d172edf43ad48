-- End to end: the file source tails the files of a folder, like tail -F on
-- a glob, and each line appended comes out once.

local driver = require "support.driver"


local JOB = [[
local ember = require "ember"
local job = ember.job { name = "tail", batch_interval = "200ms" }

job:file { path = {{dir}}, pattern = "*.log", start = {{start}} }
   :save_as_text_files({{out}})

return job
]]


-- Lines "<tag>-<i>" for i in from..to.
local function numbered(tag, from, to)
    local t = {}
    for i = from, to do
        t[#t + 1] = tag .. "-" .. i
    end
    return t
end

local function text(lines)
    return table.concat(lines, "\n") .. "\n"
end


-- The lines of a tag, in the order they came out.
local function of_tag(lines, tag)
    local t = {}
    for _, l in ipairs(lines) do
        if l:sub(1, #tag + 1) == tag .. "-" then
            t[#t + 1] = l
        end
    end
    return t
end


describe("the file source", function()
    local d, logs

    local function start(start_at)
        d:write_job("tail", driver.render(JOB, {
            dir = driver.quote(logs), out = driver.quote(d:path("out/lines")),
            start = driver.quote(start_at or "beginning") }))
        d:start()
        d:wait_for_log("%[tail%] started from", 5)
    end

    -- Waits until n lines came out; returns them in output order.
    local function wait_lines(n, what)
        return d:wait_until(function()
            local got = d:output_lines("out/lines")
            if #got >= n then
                return got
            end
            return false, #got .. " of " .. n .. " lines"
        end, 10, 0.05, what or (n .. " lines"))
    end

    -- Two more batches pass: whatever was to come out has.
    local function settle()
        d:wait_for_log("%[tail%] batch %d+:", 5, { from = d:log_mark(), count = 2 })
    end

    before_each(function()
        d = driver.new()
        logs = d:path("logs")
        driver.mkdir(logs)
    end)

    after_each(function()
        d:stop()
    end)

    it("delivers the lines appended to the files of the folder, each once and in order", function()
        driver.append_file(logs .. "/app.log", text(numbered("app", 1, 50)))
        start()
        driver.append_file(logs .. "/app.log", text(numbered("app", 51, 300)))
        driver.append_file(logs .. "/web.log", text(numbered("web", 1, 200)))
        for i = 301, 400 do     -- one write per line, like a logger
            driver.append_file(logs .. "/app.log", "app-" .. i .. "\n")
        end
        local got = wait_lines(600)
        settle()
        got = d:output_lines("out/lines")
        assert.equal(600, #got)
        assert.same(numbered("app", 1, 400), of_tag(got, "app"))
        assert.same(numbered("web", 1, 200), of_tag(got, "web"))
    end)

    it("with format = \"record\", gives each line's file, byte offset and arrival time", function()
        driver.append_file(logs .. "/a.log", "one\ntwo\n")
        driver.append_file(logs .. "/b.log", "three\n")
        d:write_job("tail", driver.render([[
local ember = require "ember"
local job = ember.job { name = "tail", batch_interval = "200ms" }
job:file { path = {{dir}}, pattern = "*.log", format = "record" }
   :map(function(r)
       return table.concat({ r.file, r.offset, r.value, type(r.timestamp),
                             tostring(r.timestamp > 1.6e12), tostring(r.key),
                             tostring(r.partition) }, " ")
   end)
   :save_as_text_files({{out}})
return job
]], { dir = driver.quote(logs), out = driver.quote(d:path("out/lines")) }))
        d:start()
        d:wait_for_log("%[tail%] started from", 5)
        driver.append_file(logs .. "/a.log", "four\n")
        local got = wait_lines(4)
        table.sort(got)
        assert.same({ "a.log 0 one number true nil nil", "a.log 4 two number true nil nil",
                      "a.log 8 four number true nil nil", "b.log 0 three number true nil nil" },
                    got)
    end)

    it("with format = \"bytes\", hands the job views of the lines and outputs their strings", function()
        local lines, want = {}, {}
        for i = 1, 3000 do
            lines[i] = ('{"dev":"d%04d","pm25":%d.%d}'):format(i, i % 40 - 5, i % 10)
            local p = tonumber(("%d.%d"):format(i % 40 - 5, i % 10))
            if p >= 0 then
                want[#want + 1] = ("d%04d %s"):format(i, tostring(p * 2))
                want[#want + 1] = lines[i]
            end
        end
        driver.append_file(logs .. "/a.log", text(lines))
        d:write_job("tail", driver.render([[
local ember = require "ember"
local job = ember.job { name = "tail", batch_interval = "200ms" }
local kept = job:file { path = {{dir}}, pattern = "*.log", format = "bytes" }
   :filter(function(v)
       local p = v:tonumber(v:find('"pm25":', 1, true) + 7, -2)
       return p >= 0
   end)
kept:map(function(v)
       return v:sub(9, 13) .. " " .. tostring(v:tonumber(23, -2) * 2)
   end)
   :union(kept)
   :save_as_text_files({{out}})
return job
]], { dir = driver.quote(logs), out = driver.quote(d:path("out/lines")) }))
        d:start()
        d:wait_for_log("%[tail%] started from", 5)
        local got = wait_lines(#want)
        settle()
        got = d:output_lines("out/lines")
        table.sort(got)
        table.sort(want)
        assert.equal(#want, #got)
        assert.same(want, got)
    end)

    it("with format = \"json\" and fields, hands the job only the fields it named", function()
        local lines, want = {}, {}
        for i = 1, 2000 do
            lines[i] = ('{"dev":"d%04d","site":{"id":%d,"tags":["a","b"]},"pm25":%d,"co2":%d}')
                :format(i, i % 7, i % 40 - 5, 400 + i)
            if i % 40 - 5 >= 0 then
                want[#want + 1] = ("d%04d %d nil nil"):format(i, i % 40 - 5)
            end
        end
        driver.append_file(logs .. "/a.log", text(lines))
        d:write_job("tail", driver.render([[
local ember = require "ember"
local job = ember.job { name = "tail", batch_interval = "200ms" }
job:file { path = {{dir}}, pattern = "*.log", format = "json", fields = { "pm25", "dev" } }
   :filter(function(r) return r.pm25 >= 0 end)
   :map(function(r) return r.dev .. " " .. r.pm25 .. " " .. tostring(r.site) .. " " .. tostring(r.co2) end)
   :save_as_text_files({{out}})
return job
]], { dir = driver.quote(logs), out = driver.quote(d:path("out/lines")) }))
        d:start()
        d:wait_for_log("%[tail%] started from", 5)
        wait_lines(#want)
        settle()
        local got = d:output_lines("out/lines")
        table.sort(got)
        assert.same(want, got)
    end)

    it("ignores files whose names do not match the pattern", function()
        start()
        driver.append_file(logs .. "/app.txt", text(numbered("txt", 1, 10)))
        driver.append_file(logs .. "/.hidden.log", text(numbered("hidden", 1, 10)))
        driver.append_file(logs .. "/app.log", text(numbered("app", 1, 10)))
        wait_lines(10)
        settle()
        assert.same(numbered("app", 1, 10), d:output_lines("out/lines"))
    end)

    it("holds back a line until its newline is written", function()
        start()
        driver.append_file(logs .. "/app.log", "first line\nsecond ha")
        wait_lines(1)
        settle()
        assert.same({ "first line" }, d:output_lines("out/lines"))
        driver.append_file(logs .. "/app.log", "lf\nthird line\n")
        wait_lines(3)
        settle()
        assert.same({ "first line", "second half", "third line" }, d:output_lines("out/lines"))
    end)

    it("loses and repeats nothing across a rename rotation", function()
        start()
        local path = logs .. "/app.log"
        -- A logger holding its file open, as loggers do.
        local old = assert(io.open(path, "ab"))
        old:setvbuf("no")
        old:write(text(numbered("app", 1, 100)))
        wait_lines(100, "the lines written before the rotation")
        -- Lines written just before the rename, and by the logger into the
        -- renamed file before it reopens: they are read from the old file.
        old:write(text(numbered("app", 101, 150)))
        assert(os.rename(path, logs .. "/app.log.1"))
        old:write(text(numbered("app", 151, 200)))
        old:close()
        -- The logger reopens app.log: a new file under the old name.
        driver.append_file(path, text(numbered("app", 201, 300)))
        local got = wait_lines(300, "every line of both files")
        d:wait_for_log("app%.log: renamed away or removed", 5)
        settle()
        got = d:output_lines("out/lines")
        table.sort(got, function(a, b)
            return tonumber(a:match("%d+$")) < tonumber(b:match("%d+$"))
        end)
        assert.same(numbered("app", 1, 300), got)
        -- Each file's lines came out in order.
        local out = d:output_lines("out/lines")
        local old_part, new_part = {}, {}
        for _, l in ipairs(out) do
            local n = tonumber(l:match("%d+$"))
            local t = n <= 200 and old_part or new_part
            t[#t + 1] = l
        end
        assert.same(numbered("app", 1, 200), old_part)
        assert.same(numbered("app", 201, 300), new_part)
    end)

    it("with start = \"end\", skips what files held at start-up and delivers what is appended", function()
        driver.append_file(logs .. "/app.log", text(numbered("old", 1, 20)))
        start("end")
        d:wait_for_log("app%.log: tailing from offset", 5)
        driver.append_file(logs .. "/app.log", text(numbered("new", 1, 20)))
        driver.append_file(logs .. "/other.log", text(numbered("other", 1, 5)))
        wait_lines(25)
        settle()
        local got = d:output_lines("out/lines")
        assert.same({}, of_tag(got, "old"))
        assert.same(numbered("new", 1, 20), of_tag(got, "new"))
        assert.same(numbered("other", 1, 5), of_tag(got, "other"))
    end)
end)
