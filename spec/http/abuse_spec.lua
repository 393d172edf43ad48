-- 1,000 malformed requests while a job runs: each gets a 4xx (or, for bytes
-- that are not HTTP at all, a closed connection), and the driver and its
-- job go on with nothing lost.

local driver = require "support.driver"
local http = require "support.http"
local tcp = require "support.tcp"
local socket = require "socket"


local SOCKET_JOB = [[
local ember = require "ember"
local job = ember.job { name = "lines", batch_interval = "200ms" }
job:socket { host = "127.0.0.1", port = {{port}} }
   :save_as_text_files({{out}})
return job
]]

local TOKEN = "t0ken"


-- The status code of a raw reply, or nil when the server closed without one.
local function status(reply)
    return tonumber((reply or ""):match("^HTTP/1%.%d (%d+)"))
end


-- Each kind of bad request: a function returning the bytes to send and a
-- check of the status that came back.
local KINDS = {
    -- paths that name nothing
    function(i)
        local paths = { "/api/v1/jobs/nope" .. i, "/api/v1/jobs/lines/batches/notatime",
                        "/api/v1/jobs/lines/frobnicate", "/../../etc/passwd", "/api/v1/%00",
                        "/api/v1/jobs/" .. string.rep("x", 2000), "/metrics/extra",
                        "/api/v1/jobs/lines/batches/99999999999999999999" }
        return "GET " .. paths[i % #paths + 1] .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
               function(code) return code == 404 or code == 400 end
    end,
    -- control calls without the token, with bodies that are not JSON
    function(i)
        local body = ({ "{bad json", "\0\1\2", string.rep("[", 3000), "" })[i % 4 + 1]
        return "POST /api/v1/jobs/lines/stop HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
               .. "Content-Length: " .. #body .. "\r\n\r\n" .. body,
               function(code) return code == 401 end
    end,
    -- a body far over the cap
    function()
        local body = string.rep("z", 64 * 1024)
        return "POST /api/v1/reload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer " .. TOKEN
               .. "\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body,
               function(code) return code == 413 or code == nil end
    end,
    -- headers far over the per-connection budget
    function()
        return "GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " .. string.rep("h", 100 * 1024)
               .. "\r\n\r\n",
               function(code) return code == 431 or code == 413 or code == 400 or code == nil end
    end,
    -- methods it does not take
    function(i)
        local m = ({ "PUT", "DELETE", "PATCH", "OPTIONS" })[i % 4 + 1]
        return m .. " /api/v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
               function(code) return code == 405 end
    end,
    -- not HTTP at all
    function(i)
        local junk = ({ "GARBAGE\r\n\r\n", "GET\r\n\r\n", "\22\3\1\0\1\0\0\0\0\0\0\0\0\0\0\0\r\n\r\n",
                        "GET / HTTP/9.9\r\n\r\n", "GET /metrics HTTP/1.1\r\nNo-Colon-Header\r\n\r\n" })
        -- (505 for a version that is not 1.x)
        return junk[i % #junk + 1], function(code)
            return code == nil or (code >= 400 and code < 500) or code == 505
        end
    end,
}


describe("the HTTP server under malformed requests", function()
    local d

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    it("answers 1,000 of them with 4xx and loses no record of a running job", function()
        local srv = d:own(tcp.server())
        d:write_job("lines.lua", driver.render(SOCKET_JOB, {
            port = srv.port, out = driver.quote(d:path("out/lines")) }))
        d:start { conf = driver.conf { ["ui.token"] = TOKEN } }
        local port = d:http_port()
        srv:accept(20)

        -- Slow clients: connections that send half a request line and wait.
        local slow = {}
        for k = 1, 20 do
            local c = assert(http.connect(port, 5))
            assert(c:send("GET /api/v1/jo"))
            slow[k] = c
        end

        local sent, next_line, bad = 0, 1, {}
        for i = 1, 1000 do
            local kind = KINDS[i % #KINDS + 1]
            local data, ok = kind(i)
            local reply = http.raw(port, data, 15)
            local code = status(reply)
            if not ok(code) then
                bad[#bad + 1] = string.format("request %d (kind %d): status %s: %q", i,
                                              i % #KINDS + 1, tostring(code), data:sub(1, 80))
            end
            if i % 20 == 0 then -- the job's input keeps coming meanwhile
                local lines = {}
                for n = next_line, next_line + 49 do
                    lines[#lines + 1] = "line " .. n
                end
                srv:send_lines(lines)
                next_line = next_line + 50
                sent = sent + 50
            end
        end
        assert.same({}, bad)

        -- The API still answers beside the slow clients.
        assert.equal(200, (http.request(port, "GET", "/healthz")))
        for _, c in ipairs(slow) do
            c:close()
        end

        d:wait_until(function()
            return #d:output_lines("out/lines") == sent, #d:output_lines("out/lines")
        end, 30, 0.05, sent .. " lines written")
        local expect = {}
        for n = 1, sent do
            expect[n] = "line " .. n
        end
        assert.same(expect, d:output_lines("out/lines"))
        assert.is_true(d:running())
        local j = d:wait_until(function()
            local j = http.json(port, "/api/v1/jobs/lines")
            return j.numProcessedRecords == sent and j, j.numProcessedRecords
        end, 10, 0.05, "the API counting every line")
        assert.equal("running", j.state)
        assert.equal(0, j.numFailedRecords)
        assert.is_nil(d:log():find("stopped through the API", 1, true))
    end)
end)
