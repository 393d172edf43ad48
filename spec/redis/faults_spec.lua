-- Redis going away: down when ember starts, restarted mid-stream. The
-- server keeps its data across the restart (append-only file, fsync
-- always), as a production Redis would; ember must lose nothing.

local driver = require "support.driver"
local redis_server = require "support.redis_server"

local render, seq, sorted = redis_server.render, redis_server.seq, redis_server.sorted
local q = driver.quote

local CONF = { ["streaming.blockInterval"] = "100ms" }

-- SADD: an output that a batch run twice (at-least-once) does not change.
local JOB = [[
local ember = require "ember"
local job = ember.job { name = "survivor", batch_interval = "200ms" }

job:redis { url = {{url}}, mode = {{mode}}, key = {{key}}, max_rate = 400 {{extra}} }
   :to_redis { url = {{url}}, command = function(v) return "SADD", {{out}}, v end }

return job
]]


describe("the redis source when the server goes away", function()
    local srv, d

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
        if srv then
            srv:stop()
            srv = nil
        end
    end)

    local function wait_card(key, n, timeout)
        d:wait_until(function()
            local got = srv:num("SCARD", key)
            return got >= n, got .. " members in " .. key
        end, timeout or 15, 0.05, n .. " members in " .. key)
    end

    it("logs one line while the server is down at start, then connects and delivers", function()
        local port = redis_server.free_port()
        local url = "redis://127.0.0.1:" .. port
        d:write_job("survivor", render(JOB, { url = q(url), mode = q("list"), key = q("d:in"),
                                              out = q("d:out"), extra = "" }))
        d:start { conf = CONF }
        d:wait_for_log("warn%s+%[survivor%] redis source " .. url:gsub("%p", "%%%0")
                       .. " %(job survivor%): connection refused, retrying in 1s", 10)
        -- the driver runs on; the next attempts (1s, 2s) are quiet
        d:wait_for_log("connection refused, retrying in 2s", 5)
        srv = redis_server.start { port = port }
        local items = seq("d", 1, 50)
        srv:cli("LPUSH", "d:in", unpack(items))
        d:wait_for_log("%(job survivor%): connected again after", 10)
        wait_card("d:out", 50)
        assert.same(items, sorted(srv:lines("SMEMBERS", "d:out")))
        assert.equal(1, #d:log_lines("warn%s+%[survivor%].*connection refused"))
    end)

    it("logs a refused password as a fault of option 'url', without the password", function()
        srv = redis_server.start { args = { "--requirepass", "right-one" } }
        srv.password = "right-one"
        local url = "redis://:wrong-one@127.0.0.1:" .. srv.port
        d:write_job("survivor", render(JOB, { url = q(url), mode = q("list"), key = q("a:in"),
                                              out = q("a:out"), extra = "" }))
        d:start { conf = CONF }
        local line = d:wait_for_log("warn%s+%[survivor%]", 10)
        assert.truthy(line:find("redis source redis://:***@127.0.0.1:" .. srv.port
                                .. " (job survivor): option 'url': authentication failed: "
                                .. "WRONGPASS", 1, true), line)
        assert.falsy(d:log():find("wrong-one", 1, true), "the password reached the log")
    end)

    for _, case in ipairs({
        { mode = "list", extra = "",
          pending = function(s) return s:num("LLEN", "r:in:processing:survivor") end },
        { mode = "stream", extra = ", claim_idle = '1s'",
          pending = function(s) return s:num("XPENDING", "r:in", "ember-survivor") end },
    }) do
        it("loses nothing of a " .. case.mode .. " when the server restarts mid-stream", function()
            srv = redis_server.start { persist = true }
            local items = seq("r", 1, 600)
            local function write(from, to)
                if case.mode == "list" then
                    srv:cli("LPUSH", "r:in", unpack(items, from, to))
                else
                    local cmds = {}
                    for i = from, to do
                        cmds[#cmds + 1] = { "XADD", "r:in", "*", "value", items[i] }
                    end
                    srv:pipe(cmds)
                end
            end
            write(1, 400)
            d:write_job("survivor", render(JOB, { url = q(srv.url), mode = q(case.mode),
                                                  key = q("r:in"), out = q("r:out"),
                                                  extra = case.extra }))
            d:start { conf = CONF }
            wait_card("r:out", 100)
            srv:restart()                    -- mid-stream: about 300 still to read
            assert.is_true(srv:num("SCARD", "r:out") < 400, "the restart came too late")
            write(401, 600)
            d:wait_for_log("%(job survivor%): connected again after", 15)
            wait_card("r:out", 600, 20)
            d:wait_until(function()
                local n = case.pending(srv)
                return n == 0, n .. " not acknowledged"
            end, 10, 0.05, "every record acknowledged")
            assert.same(items, sorted(srv:lines("SMEMBERS", "r:out")))
        end)
    end
end)
