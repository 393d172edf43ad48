-- End to end: SIGTERM and SIGINT stop ember gracefully: receivers stop,
-- every record already received goes through every output, exit 0. A
-- second signal exits at once.

local driver = require "support.driver"
local tcp = require "support.tcp"


local SOCKET_JOB = [[
local ember = require "ember"
local job = ember.job { name = "lines", batch_interval = {{interval}} }

job:socket { host = "127.0.0.1", port = {{port}} }
   :save_as_text_files({{out}})
   :foreach_record(function(r)
       if r == "last" then
           ember.log("info", "saw the last record")
       end
   end)

return job
]]

-- A batch whose output takes `busy` seconds; writes "started" when it runs.
local SLOW_JOB = [[
local ember = require "ember"
local socket = require "socket"
local job = ember.job { name = "slow", batch_interval = "200ms" }

job:generator { kind = "sequence", rate = 50 }
   :foreach_batch(function(records, info)
       if #records == 0 then return end
       local f = assert(io.open({{marker}}, "a"))
       f:write("started ", info.time, "\n")
       f:close()
       local t0 = socket.gettime()
       while socket.gettime() - t0 < {{busy}} do end
       f = assert(io.open({{marker}}, "a"))
       f:write("done ", info.time, "\n")
       f:close()
   end)

return job
]]


local function sequence(from, to)
    local t = {}
    for i = from, to do
        t[#t + 1] = tostring(i)
    end
    return t
end


describe("graceful stop", function()
    local d, srv

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    local function start_socket_job(interval)
        srv = d:own(tcp.server())
        d:write_job("lines", driver.render(SOCKET_JOB, {
            port = srv.port, interval = driver.quote(interval),
            out = driver.quote(d:path("out/lines")) }))
        d:start()
        srv:accept(10)
    end

    for _, sig in ipairs({ "TERM", "INT" }) do
        it("puts every record received before SIG" .. sig .. " through the outputs and exits 0", function()
            start_socket_job("300ms")
            -- Records flow in while batches run...
            for i = 1, 3000, 500 do
                srv:send_lines(sequence(i, i + 499))
            end
            d:wait_until(function()
                return #d:output_lines("out/lines") > 0, "no output yet"
            end, 10, 0.02, "the first batch")
            srv:send_lines(sequence(3001, 5000))
            -- ... and the signal comes once ember has read them all,
            -- before the batch they are in is due.
            srv:wait_read(10)
            d:signal(sig)
            assert.equal(0, d:wait_exit(10))
            assert.same(sequence(1, 5000), d:output_lines("out/lines"))
            d:wait_for_log("%[ember%] stopped$", 1, { exit_ok = true })
        end)
    end

    it("puts the lines a rate-limited socket source has already read through the outputs", function()
        srv = d:own(tcp.server())
        d:write_job("lines", driver.render([=[
local ember = require "ember"
local job = ember.job { name = "lines", batch_interval = "300ms" }
job:socket { host = "127.0.0.1", port = {{port}}, max_rate = 200 }
   :save_as_text_files({{out}})
return job
]=], { port = srv.port, out = driver.quote(d:path("out/lines")) }))
        d:start()
        srv:accept(10)
        -- 1000 short lines: a few KiB, read by ember in one go, then let
        -- through at 200 a second.
        srv:send_lines(sequence(1, 1000))
        srv:wait_read(10)
        d:wait_until(function()
            return #d:output_lines("out/lines") > 0, "no output yet"
        end, 10, 0.02, "the first batch")
        d:signal("TERM")
        assert.equal(0, d:wait_exit(10))
        local out = d:output_lines("out/lines")
        assert.equal(1000, #out, "records read from the socket before SIGTERM but never output: "
                                 .. (1000 - #out))
        assert.same(sequence(1, 1000), out)
    end)

    it("runs every output of the last batch, even with a long batch interval", function()
        start_socket_job("1m")
        srv:send_lines(sequence(1, 100))
        srv:send_lines({ "last" })
        srv:wait_read(10)
        d:signal("TERM")
        assert.equal(0, d:wait_exit(10))
        local expect = sequence(1, 100)
        expect[#expect + 1] = "last"
        assert.same(expect, d:output_lines("out/lines"))
        assert.equal(1, #d:log_lines("%[lines%] saw the last record"))
    end)

    it("waits for a batch that is running to finish", function()
        d:write_job("slow", driver.render(SLOW_JOB, {
            marker = driver.quote(d:path("marker")), busy = 1 }))
        d:start()
        d:wait_until(function()
            return d:file_lines("marker")[1] ~= nil
        end, 10, 0.01, "a batch to start")
        d:signal("TERM")
        assert.equal(0, d:wait_exit(10))
        -- Every batch that started finished.
        local started, done = 0, 0
        for _, l in ipairs(d:file_lines("marker")) do
            if l:find("^started") then started = started + 1 else done = done + 1 end
        end
        assert.is_true(started >= 1)
        assert.equal(started, done)
    end)

    it("with stopGracefullyOnShutdown = false, exits at once even while a batch runs", function()
        d:write_job("slow", driver.render(SLOW_JOB, {
            marker = driver.quote(d:path("marker")), busy = 30 }))
        d:start { conf = driver.conf { ["streaming.stopGracefullyOnShutdown"] = "false" } }
        d:wait_until(function()
            return d:file_lines("marker")[1] ~= nil
        end, 10, 0.01, "a batch to start")
        local t0 = driver.now()
        d:signal("TERM")
        d:wait_for_log("unprocessed records are not acknowledged", 5)
        -- Not graceful: the 30 s batch in hand is not waited for.
        assert.equal(0, d:wait_exit(5))
        assert.is_true(driver.now() - t0 < 3, "took " .. (driver.now() - t0) .. "s")
    end)

    it("exits at once with status 1 on a second signal", function()
        d:write_job("slow", driver.render(SLOW_JOB, {
            marker = driver.quote(d:path("marker")), busy = 30 }))
        d:start()
        d:wait_until(function()
            return d:file_lines("marker")[1] ~= nil
        end, 10, 0.01, "a batch to start")
        d:signal("TERM")
        d:wait_for_log("stopping gracefully", 5)
        local t0 = driver.now()
        d:signal("TERM")
        assert.equal(1, d:wait_exit(5))
        assert.is_true(driver.now() - t0 < 2, "took " .. (driver.now() - t0) .. "s")
        d:wait_for_log("second signal: exiting now", 1, { exit_ok = true })
    end)
end)
