-- /healthz and /readyz flip when something is wrong and back when it is
-- mended: a job stopped by on_error = "fail", a socket source whose server
-- went away, batches slower than their interval.

local driver = require "support.driver"
local http = require "support.http"
local tcp = require "support.tcp"
local socket = require "socket"
local cjson = require "cjson"


-- Fails on record 50 when fail_at is set, else runs on.
local FAIL_JOB = [[
local ember = require "ember"
local job = ember.job { name = "fragile", batch_interval = "200ms", on_error = "fail" }
job:generator { kind = "sequence", rate = 200 }
   :map(function(s)
       local n = tonumber(s)
       if {{fail}} and n == 50 then error("record 50 is bad") end
       return n
   end)
   :save_as_text_files({{out}})
return job
]]

local SOCKET_JOB = [[
local ember = require "ember"
local job = ember.job { name = "lines", batch_interval = "200ms" }
job:socket { host = "127.0.0.1", port = {{port}}, reconnect_delay = "100ms" }
   :save_as_text_files({{out}})
return job
]]

-- Each batch waits while the file exists: longer than the interval.
local SLOW_JOB = [[
local ember = require "ember"
local ffi = require "ffi"
pcall(ffi.cdef, "int poll(void *fds, unsigned long n, int timeout);")
local job = ember.job { name = "slow", batch_interval = "200ms" }
job:generator { kind = "sequence", rate = 50 }
   :foreach_batch(function(batch)
       local f = io.open({{flag}}, "r")
       if f then f:close(); ffi.C.poll(nil, 0, 350) end
   end)
return job
]]


-- A listener on a given port (the one ember reconnects to).
local function listen_on(port)
    local s = assert(socket.tcp4())
    assert(s:setoption("reuseaddr", true))
    assert(s:bind("127.0.0.1", port))
    assert(s:listen(16))
    return setmetatable({ listener = s, port = port, sent = 0 }, tcp.Server)
end


local function health(port, path)
    local code, body = http.request(port, "GET", path)
    return code, cjson.decode(body)
end

local function reason_of(doc, check)
    for _, r in ipairs(doc.reasons) do
        if r.check == check then
            return r
        end
    end
end


describe("health", function()
    local d

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    it("fails /healthz and /readyz while a job stopped on an error, and recovers after a fix", function()
        local out = driver.quote(d:path("out/fragile"))
        d:write_job("fragile.lua", driver.render(FAIL_JOB, { fail = "true", out = out }))
        d:start()
        local port = d:http_port()
        local doc = d:wait_until(function()
            local code, doc = health(port, "/healthz")
            return code == 503 and doc, code
        end, 20, 0.05, "/healthz to fail")
        assert.equal("fail", doc.status)
        local r = reason_of(doc, "job_failed")
        assert.equal("fragile", r.job)
        assert.truthy(r.message:find("record 50 is bad", 1, true), r.message)
        local code, ready = health(port, "/readyz")
        assert.equal(503, code)
        assert.truthy(reason_of(ready, "job_failed"))
        assert.equal("failed", http.json(port, "/api/v1/jobs/fragile").state)

        -- Fixed file, reloaded: the job runs again and health is back.
        d:write_job("fragile.lua", driver.render(FAIL_JOB, { fail = "false", out = out }))
        d:signal("HUP")
        d:wait_until(function()
            local code = health(port, "/healthz")
            local code2 = health(port, "/readyz")
            return code == 200 and code2 == 200, code .. " " .. code2
        end, 20, 0.05, "/healthz and /readyz back to 200")
        assert.equal("running", http.json(port, "/api/v1/jobs/fragile").state)
    end)

    it("fails /readyz while a socket source's server is gone, and recovers when it returns", function()
        local srv = d:own(tcp.server())
        local tcp_port = srv.port
        d:write_job("lines.lua", driver.render(SOCKET_JOB, {
            port = tcp_port, out = driver.quote(d:path("out/lines")) }))
        d:start { conf = driver.conf { ["ui.health.receiverFailingFor"] = "1s" } }
        local port = d:http_port()
        srv:accept(20)
        srv:send_lines({ "one", "two" })
        d:wait_until(function() return #d:output_lines("out/lines") == 2 end, 20, 0.05, "2 lines")
        assert.equal(200, (health(port, "/readyz")))

        srv:close() -- the connection and the listener: ember's reconnects are refused
        local doc = d:wait_until(function()
            local code, doc = health(port, "/readyz")
            return code == 503 and doc, code
        end, 20, 0.05, "/readyz to fail")
        local r = reason_of(doc, "receiver_failing")
        assert.equal("lines", r.job)
        assert.truthy(r.message:find("socket", 1, true), r.message)
        -- Liveness is not readiness: the driver itself is fine.
        assert.equal(200, (health(port, "/healthz")))
        local rx = http.json(port, "/api/v1/receivers")[1]
        assert.is_true(rx.failing)
        assert.truthy(rx.lastErrorMessage:find("refused", 1, true), rx.lastErrorMessage)

        local back = d:own(listen_on(tcp_port))
        back:accept(20)
        d:wait_until(function()
            return (health(port, "/readyz")) == 200
        end, 20, 0.05, "/readyz back to 200")
        back:send_lines({ "three" })
        d:wait_until(function() return #d:output_lines("out/lines") == 3 end, 20, 0.05, "3 lines")
        assert.same({ "one", "two", "three" }, d:output_lines("out/lines"))
    end)

    it("fails /readyz after ui.health.lateBatches batches slower than their interval", function()
        local flag = d:path("slow.flag")
        driver.write_file(flag, "")
        d:write_job("slow.lua", driver.render(SLOW_JOB, { flag = driver.quote(flag) }))
        d:start { conf = driver.conf { ["ui.health.lateBatches"] = 3,
                                       ["streaming.maxWaitingBatches"] = 1000 } }
        local port = d:http_port()
        local doc = d:wait_until(function()
            local code, doc = health(port, "/readyz")
            return code == 503 and reason_of(doc, "late_batches") and doc, code
        end, 30, 0.05, "/readyz to fail on late batches")
        local r = reason_of(doc, "late_batches")
        assert.equal("slow", r.job)
        assert.equal(200, (health(port, "/healthz")))
        os.remove(flag)
        d:wait_until(function()
            return (health(port, "/readyz")) == 200
        end, 60, 0.05, "/readyz back to 200 once batches are quick")
    end)
end)
