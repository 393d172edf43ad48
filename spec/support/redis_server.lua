-- support.redis_server: a real redis-server for the specs, on a free
-- loopback port with its own folder, and redis-cli as the independent
-- client that writes input and reads output.
--
--   local redis_server = require "support.redis_server"
--   local srv = redis_server.start()                -- { persist = true } keeps data
--   srv:cli("LPUSH", "in", "a", "b")                -- redis-cli's raw output
--   srv:lines("LRANGE", "out", "0", "-1")           -- that output as lines
--   srv:num("LLEN", "out")                          -- as a number
--   srv:pipe({ { "XADD", "s", "*", "value", "1" }, ... })   -- many, via --pipe
--   srv:restart()                                   -- same port and folder
--   srv:stop()                                      -- in teardown; idempotent
--
-- Servers still running when the Lua state closes (a spec that errors
-- before its teardown) are killed too. Every wait has a deadline.

local unistd = require "posix.unistd"
local fcntl = require "posix.fcntl"
local wait = require "posix.sys.wait"
local psignal = require "posix.signal"
local stdlib = require "posix.stdlib"
local socket = require "socket"
local driver = require "support.driver"

local error = error
local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local io_open = io.open
local io_popen = io.popen
local os_getenv = os.getenv
local str_format = string.format
local tbl_concat = table.concat


local _M = {}

local Server = {}
Server.__index = Server


local live = setmetatable({}, { __mode = "k" })
_M._sentinel = newproxy(true)
getmetatable(_M._sentinel).__gc = function()
    for s in pairs(live) do
        pcall(s.kill, s)
    end
end


local function shell_quote(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end


-- A TCP port nobody listens on right now.
function _M.free_port()
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    return tonumber(port)
end


-- True when something answers PING on the port.
local function answers(port)
    local c = socket.tcp()
    c:settimeout(0.2)
    if not c:connect("127.0.0.1", port) then
        c:close()
        return false
    end
    c:send("PING\r\n")
    local line = c:receive("*l")
    c:close()
    return line == "+PONG" or (line or ""):find("^%-NOAUTH") ~= nil
end


function Server:spawn()
    local argv = { "--port", tostring(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                   "--protected-mode", "no", "--daemonize", "no",
                   "--logfile", self.dir .. "/redis.log" }
    for _, a in ipairs(self.args or {}) do
        argv[#argv + 1] = a
    end
    if self.persist then
        -- every write reaches the disk before the reply: a restart keeps all
        for _, a in ipairs({ "--appendonly", "yes", "--appendfsync", "always", "--save", "" }) do
            argv[#argv + 1] = a
        end
    else
        for _, a in ipairs({ "--appendonly", "no", "--save", "" }) do
            argv[#argv + 1] = a
        end
    end
    io.stdout:flush()
    local pid = assert(unistd.fork())
    if pid == 0 then
        pcall(function()
            local null = fcntl.open("/dev/null", fcntl.O_RDWR)
            unistd.dup2(null, 0)
            unistd.dup2(null, 1)
            unistd.dup2(null, 2)
            for fd = 3, 1023 do
                unistd.close(fd)
            end
            unistd.execp("redis-server", argv)
        end)
        unistd._exit(127)
    end
    self.pid = pid
    driver.wait_until(function()
        if self:exited() then
            error("redis-server exited at start (status " .. tostring(self.status) .. ")\n"
                  .. (driver.read_file(self.dir .. "/redis.log") or ""), 0)
        end
        return answers(self.port)
    end, 10, 0.02, "redis-server on port " .. self.port)
end


-- Starts redis-server. opts.persist: append-only file, fsync always.
-- opts.port: a given port (default: a free one). opts.args: more
-- arguments ({ "--requirepass", "x" }).
function _M.start(opts)
    opts = opts or {}
    local dir = assert(stdlib.mkdtemp((os_getenv("TMPDIR") or "/tmp") .. "/ember-redis-XXXXXX"))
    local self = setmetatable({ dir = dir, persist = opts.persist, args = opts.args,
                                port = opts.port or _M.free_port() }, Server)
    self.url = "redis://127.0.0.1:" .. self.port
    live[self] = true
    self:spawn()
    return self
end


-- Reaps the server without blocking; true once it is gone.
function Server:exited()
    if not self.pid then
        return true
    end
    local pid, how, code = wait.wait(self.pid, wait.WNOHANG)
    if pid == self.pid or pid == nil then
        self.pid, self.status = nil, code
        return true
    end
    return false
end


-- SIGTERM (redis-server's clean shutdown, which flushes the append-only
-- file) and waits for the exit; SIGKILL when it does not come.
function Server:shutdown()
    if self:exited() then
        return
    end
    psignal.kill(self.pid, psignal.SIGTERM)
    local ok = pcall(driver.wait_until, function() return self:exited() end, 10, 0.02,
                     "redis-server to exit")
    if not ok and self.pid then
        psignal.kill(self.pid, psignal.SIGKILL)
        driver.wait_until(function() return self:exited() end, 5, 0.02, "redis-server to die")
    end
end


-- Stops and starts again on the same port and folder.
function Server:restart()
    self:shutdown()
    self:spawn()
end


function Server:kill()
    if self.pid and not self:exited() then
        psignal.kill(self.pid, psignal.SIGKILL)
        local deadline = driver.now() + 5
        while not self:exited() and driver.now() < deadline do
            driver.sleep(0.01)
        end
    end
end


-- Stops the server and removes its folder. Safe to call twice.
function Server:stop()
    self:shutdown()
    if self.dir and os_getenv("EMBER_SPEC_KEEP") ~= "1" then
        os.execute("rm -rf " .. shell_quote(self.dir))
    end
    live[self] = nil
end


-- Runs redis-cli with these arguments; returns its (raw) output.
function Server:cli(...)
    local args = { "redis-cli", "-h", "127.0.0.1", "-p", tostring(self.port) }
    if self.password then
        args[#args + 1] = "--no-auth-warning -a " .. shell_quote(self.password)
    end
    for i = 1, select("#", ...) do
        args[#args + 1] = shell_quote(select(i, ...))
    end
    local f = assert(io_popen(tbl_concat(args, " ") .. " 2>&1", "r"))
    local out = f:read("*a")
    f:close()
    return out
end


-- The output of a command as lines (an array reply: one element a line;
-- an empty array prints one empty line, so empty lines are left out).
function Server:lines(...)
    local out = {}
    for _, l in ipairs(driver.lines(self:cli(...))) do
        if l ~= "" then
            out[#out + 1] = l
        end
    end
    return out
end


-- The output of a command as a number (LLEN, XLEN, ...).
function Server:num(...)
    local out = self:cli(...)
    local n = tonumber(out:match("^%s*(%-?%d+)"))
    if not n then
        error("redis-cli " .. tbl_concat({ ... }, " ") .. ": not a number: " .. out, 2)
    end
    return n
end


-- Waits (through driver d, so a timeout shows ember's log) until the list
-- at key holds at least n items.
function Server:wait_len(d, key, n, timeout)
    d:wait_until(function()
        local got = self:num("LLEN", key)
        return got >= n, got .. " items in " .. key
    end, timeout or 10, 0.05, n .. " items in " .. key)
end


-- Sends many commands (arrays of strings) through `redis-cli --pipe`,
-- which writes the protocol and checks every reply.
function Server:pipe(commands)
    local path = self.dir .. "/pipe.resp"
    local f = assert(io_open(path, "wb"))
    local buf, m = {}, 0
    for _, c in ipairs(commands) do
        m = m + 1
        buf[m] = "*" .. #c .. "\r\n"
        for _, a in ipairs(c) do
            a = tostring(a)
            buf[m + 1] = "$" .. #a .. "\r\n"
            buf[m + 2] = a
            buf[m + 3] = "\r\n"
            m = m + 3
        end
        if m > 30000 then
            f:write(tbl_concat(buf, "", 1, m))
            m = 0
        end
    end
    f:write(tbl_concat(buf, "", 1, m))
    f:close()
    local p = assert(io_popen(str_format("redis-cli -h 127.0.0.1 -p %d --pipe < %s 2>&1",
                                         self.port, shell_quote(path)), "r"))
    local out = p:read("*a")
    p:close()
    local errors, replies = out:match("errors: (%d+), replies: (%d+)")
    if tonumber(errors) ~= 0 or tonumber(replies) ~= #commands then
        error("redis-cli --pipe: " .. out, 2)
    end
    return tonumber(replies)
end


-- Fills {{name}} in a job template with vars[name] (inserted as is:
-- quote strings with driver.quote).
function _M.render(template, vars)
    return (template:gsub("{{([%w_]+)}}", function(k)
        local v = vars[k]
        if v == nil then
            error("render: no value for {{" .. k .. "}}", 3)
        end
        return tostring(v)
    end))
end


-- A job reading {{key}} in {{mode}} that writes each batch it gets to
-- {{inflight}}, then waits for the file {{never}}, which never appears: its
-- batch stays in flight until the driver is killed.
_M.STUCK_JOB = [[
local ember = require "ember"
local job = ember.job { name = {{name}}, batch_interval = "200ms" }

job:redis { url = {{url}}, mode = {{mode}}, key = {{key}} }
   :foreach_batch(function(records)
       if #records == 0 then return end
       local f = assert(io.open({{inflight}}, "a"))
       for _, r in ipairs(records) do f:write(r, "\n") end
       f:close()
       while not io.open({{never}}) do os.execute("sleep 0.05") end
   end)

return job
]]


-- { prefix .. from, ..., prefix .. to }, zero-padded so the order sorts.
function _M.seq(prefix, from, to)
    local t = {}
    for i = from, to do
        t[#t + 1] = str_format("%s%05d", prefix, i)
    end
    return t
end


-- { p .. t[1], p .. t[2], ... }.
function _M.prefixed(t, p)
    local out = {}
    for i, v in ipairs(t) do
        out[i] = p .. v
    end
    return out
end


-- A sorted copy.
function _M.sorted(t)
    local c = {}
    for i, v in ipairs(t) do
        c[i] = v
    end
    table.sort(c)
    return c
end


return _M
