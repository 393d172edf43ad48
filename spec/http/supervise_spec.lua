-- `ember run --supervise` (Spark's flag): the process it starts supervises
-- the driver, starts it again when it crashes (here: kill -9), and the jobs
-- resume; a stop passes through to the driver and ends both, and a driver
-- whose supervisor dies stops too.

local driver = require "support.driver"
local http = require "support.http"
local tcp = require "support.tcp"
local psignal = require "posix.signal"
local cjson = require "cjson"


-- Every line it reads, appended to a file as it comes.
local JOB = [[
local ember = require "ember"
local job = ember.job { name = "lines", batch_interval = "200ms" }
local out = {{out}}
job:socket { host = "127.0.0.1", port = {{port}}, reconnect_delay = "200ms" }
   :foreach_batch(function(records)
       local f = assert(io.open(out, "a"))
       for _, r in ipairs(records) do f:write(r, "\n") end
       f:close()
   end)
return job
]]


local function alive(pid)
    return psignal.kill(pid, 0) == 0
end


describe("ember run --supervise", function()
    local d, srv

    before_each(function()
        d = driver.new()
        srv = d:own(tcp.server())
        d:write_job("lines.lua", driver.render(JOB, { port = srv.port,
                                                      out = driver.quote(d:path("out.txt")) }))
    end)

    after_each(function()
        d:stop()
    end)

    local function pid_file()
        return tonumber((driver.read_file(d.checkpoint_dir .. "/ember.pid") or ""):match("^(%d+)\n"))
    end

    local function lines()
        return driver.lines(driver.read_file(d:path("out.txt")) or "")
    end

    it("starts the driver again after it is killed, and the job goes on", function()
        d:start { args = { "--supervise" } }
        local port = d:http_port()
        srv:accept(20)
        srv:send_lines({ "one", "two" })
        d:wait_until(function() return #lines() == 2, cjson.encode(lines()) end, 20, 0.05, "two lines")
        local first = d:wait_until(function() return pid_file() end, 10, 0.05, "the PID file")
        assert.is_not.equal(d.pid, first)   -- the driver is the supervisor's child
        assert.equal("lines", http.json(port, "/api/v1/jobs")[1].name)

        local mark = d:log_mark()
        psignal.kill(first, psignal.SIGKILL)
        d:wait_for_log("--supervise: the driver (pid " .. first .. ") died of Killed; starting it again",
                       20, { plain = true, from = mark })
        d:wait_for_log("HTTP API and web UI on http://", 30, { plain = true, from = mark })
        local second = d:wait_until(function()
            local p = pid_file()
            return p and p ~= first and alive(p) and p
        end, 30, 0.05, "a new driver in the PID file")
        assert.is_false(alive(first))
        assert.is_true(d:running())         -- the supervisor

        srv:accept(30)                      -- the new driver's socket source
        srv:send_lines({ "three" })
        d:wait_until(function() return #lines() == 3, cjson.encode(lines()) end, 30, 0.05, "three lines")
        assert.same({ "one", "two", "three" }, lines())

        d:signal("TERM")                    -- passed on: the driver stops, then the supervisor
        local code = d:wait_exit(30)
        assert.equal(0, code)
        d:wait_until(function() return not alive(second) end, 10, 0.05, "the driver gone")
        -- one restart (the kill), none after the stop
        assert.equal(1, #d:log_lines("starting it again", { plain = true }))
    end)

    it("stops the driver when the supervisor dies", function()
        d:start { args = { "--supervise" } }
        d:http_port()
        local child = d:wait_until(function() return pid_file() end, 10, 0.05, "the PID file")
        d:signal("KILL")
        d:wait_exit(10)
        d:wait_until(function() return not alive(child) end, 30, 0.05, "the driver to stop")
    end)
end)
