-- support.rabbitmq_server: a real rabbitmq-server for the RabbitMQ specs,
-- and the independent clients (amqp-tools, rabbitmqctl) that write their
-- input and read their output.
--
--   local rabbit = require "support.rabbitmq_server"
--   local srv = rabbit.start()              -- in setup(): about 4 s
--   srv.url                                 -- amqp://guest:guest@127.0.0.1:<port> (vhost /)
--   srv:declare("in")                       -- a durable queue
--   srv:publish("in", { "a", "b" })         -- persistent messages
--   srv:queue("in")                         -- { ready = n, unacked = n }
--   srv:wait_queue("in", function(q) return q.ready == 0 end, 10, "in drained")
--   srv:consume("out", 2)                   -- the bodies of 2 messages, acked
--   srv:restart()                           -- stop, start again: same data, same port
--   srv:stop()                              -- in teardown(): no beam process left
--
-- The node is the suite's own: node name, AMQP and distribution ports,
-- data and log folders, Erlang cookie (HOME) and even epmd (ERL_EPMD_PORT)
-- are private, so it neither meets nor disturbs another broker on the
-- machine. The scripts under /usr/lib/rabbitmq/bin are run directly: the
-- /usr/sbin wrappers switch to the rabbitmq user when run as root.
--
-- Every wait polls a condition against a deadline; a server that does not
-- come up fails with the end of its log.

local unistd = require "posix.unistd"
local fcntl = require "posix.fcntl"
local psignal = require "posix.signal"
local pwait = require "posix.sys.wait"
local stdlib = require "posix.stdlib"
local socket = require "socket"
local driver = require "support.driver"

local error = error
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local getmetatable = getmetatable
local pcall = pcall
local newproxy = newproxy
local io_open = io.open
local io_popen = io.popen
local os_getenv = os.getenv
local str_format = string.format
local str_match = string.match
local tbl_concat = table.concat
local tbl_sort = table.sort


local _M = {}

local BIN = "/usr/lib/rabbitmq/bin/"
local START_TIMEOUT = 60    -- seconds; about 4 s on an idle machine
local STOP_TIMEOUT = 30

local Server = {}
Server.__index = Server

-- Servers still running, stopped when busted's Lua state closes (a spec
-- file that errors before its teardown): no broker outlives the suite.
local live = {}
_M._sentinel = newproxy(true)
getmetatable(_M._sentinel).__gc = function()
    for srv in pairs(live) do
        pcall(srv.stop, srv)
    end
end


local function shell_quote(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
_M.shell_quote = shell_quote


-- A TCP port nobody listens on right now (the kernel's choice).
local function free_port()
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    return tonumber(port)
end
_M.free_port = free_port


local function write_file(path, content)
    local f = assert(io_open(path, "wb"))
    assert(f:write(content))
    assert(f:close())
end


-- Runs a shell command; returns its exit code and its output (stdout and
-- stderr together).
local function run(cmd)
    local p = assert(io_popen(cmd .. " 2>&1; echo \"__rc=$?\""))
    local out = p:read("*a")
    p:close()
    local rc = tonumber(str_match(out, "__rc=(%d+)%s*$"))
    return rc, (out:gsub("__rc=%d+%s*$", ""))
end
_M.run = run


-- "K=V K=V" for env(1), sorted so commands read the same every time.
function Server:env_prefix()
    local parts = {}
    for k, v in pairs(self.env) do
        parts[#parts + 1] = k .. "=" .. shell_quote(v)
    end
    tbl_sort(parts)
    return "env " .. tbl_concat(parts, " ") .. " "
end


-- The last n lines of the server's own log, for failure messages.
function Server:log_tail(n)
    n = n or 30
    local f = io_open(self.dir .. "/server.log", "rb")
    local lines = {}
    if f then
        for l in f:lines() do
            lines[#lines + 1] = l
        end
        f:close()
    end
    local from = #lines - n + 1
    if from < 1 then
        from = 1
    end
    local out = { "--- last lines of rabbitmq-server's output (" .. self.dir .. "/server.log) ---" }
    for i = from, #lines do
        out[#out + 1] = lines[i]
    end
    return tbl_concat(out, "\n")
end


-- Forks rabbitmq-server in a session of its own, so that its process group
-- holds the start script, beam and beam's helpers (epmd daemonizes out of
-- it and is stopped through its port).
function Server:spawn()
    io.stdout:flush()
    io.stderr:flush()
    local pid, err = unistd.fork()
    if not pid then
        error("fork: " .. tostring(err), 2)
    end
    if pid == 0 then
        pcall(function()
            unistd.setpid("s")
            unistd.chdir(self.dir)
            for k, v in pairs(self.env) do
                stdlib.setenv(k, v)
            end
            local log = fcntl.open(self.dir .. "/server.log",
                                   fcntl.O_WRONLY + fcntl.O_CREAT + fcntl.O_APPEND, 420)
            local null = fcntl.open("/dev/null", fcntl.O_RDONLY)
            unistd.dup2(null, 0)
            unistd.dup2(log, 1)
            unistd.dup2(log, 2)
            for fd = 3, 1023 do
                unistd.close(fd)
            end
            unistd.exec(BIN .. "rabbitmq-server", {})
        end)
        unistd._exit(127)
    end
    self.pid, self.exited = pid, false
end


-- True once the start script (and so beam, which it waits for) exited.
function Server:reaped()
    if self.exited or not self.pid then
        return true
    end
    local pid = pwait.wait(self.pid, pwait.WNOHANG)
    if pid == self.pid or pid == nil then
        self.exited = true
    end
    return self.exited
end


local function port_open(port)
    local c = socket.tcp()
    c:settimeout(0.2)
    local ok = c:connect("127.0.0.1", port)
    c:close()
    return ok ~= nil
end


-- Waits until the AMQP port accepts connections: the listener starts at
-- the end of the boot, once queues are recovered.
function Server:wait_ready()
    driver.wait_until(function()
        if self:reaped() then
            error("rabbitmq-server exited while starting\n" .. self:log_tail(), 0)
        end
        return port_open(self.port)
    end, START_TIMEOUT, 0.1, "rabbitmq-server to accept AMQP connections on port "
        .. self.port, function() return self:log_tail() end)
end


-- Starts a broker on fresh ports in a fresh folder. Returns a Server.
function _M.start()
    local base = os_getenv("TMPDIR")
    if not base or base == "" then
        base = "/tmp"
    end
    local dir = assert(stdlib.mkdtemp(base .. "/ember-rabbitmq-XXXXXX"))
    local port = free_port()
    local self = setmetatable({
        dir = dir,
        port = port,
        node = "ember_spec_" .. port .. "@localhost",
        url = "amqp://guest:guest@127.0.0.1:" .. port,
    }, Server)
    self.env = {
        HOME = dir,                                   -- the Erlang cookie lives here
        ERL_EPMD_PORT = tostring(free_port()),        -- an epmd of our own
        RABBITMQ_NODENAME = self.node,
        RABBITMQ_NODE_IP_ADDRESS = "127.0.0.1",
        RABBITMQ_NODE_PORT = tostring(port),
        RABBITMQ_DIST_PORT = tostring(free_port()),
        RABBITMQ_MNESIA_BASE = dir .. "/mnesia",
        RABBITMQ_LOG_BASE = dir .. "/log",
        RABBITMQ_CONFIG_FILE = dir .. "/rabbitmq.conf",
        RABBITMQ_ENABLED_PLUGINS_FILE = dir .. "/enabled_plugins",
        RABBITMQ_PID_FILE = dir .. "/rabbitmq.pid",
    }
    write_file(dir .. "/enabled_plugins", "[].\n")
    write_file(dir .. "/rabbitmq.conf", "disk_free_limit.absolute = 10MB\n")
    live[self] = true
    self:spawn()
    local ok, err = pcall(self.wait_ready, self)
    if not ok then
        self:stop()
        error(err, 2)
    end
    return self
end


-- rabbitmqctl against this node; returns its output, raising when it fails.
function Server:ctl(args)
    local rc, out = run(self:env_prefix() .. BIN .. "rabbitmqctl -q -n " .. self.node .. " "
                        .. args)
    if rc ~= 0 then
        error("rabbitmqctl " .. args .. " failed (" .. tostring(rc) .. "): " .. out, 2)
    end
    return out
end


-- { name = { ready = n, unacked = n } } for every queue.
function Server:queues()
    local out = self:ctl("list_queues name messages_ready messages_unacknowledged")
    local t = {}
    for name, ready, unacked in out:gmatch("([^\n\t]+)\t(%d+)\t(%d+)") do
        t[name] = { ready = tonumber(ready), unacked = tonumber(unacked) }
    end
    return t
end


-- { ready = n, unacked = n } for one queue, or nil when it does not exist.
function Server:queue(name)
    return self:queues()[name]
end


-- Polls the queue until check(q) is true (q may be nil: no such queue).
function Server:wait_queue(name, check, timeout, what)
    local last
    return driver.wait_until(function()
        local q = self:queue(name)
        last = q
        if check(q) then
            return q
        end
        return nil, q and str_format("queue %s: ready %d, unacked %d", name, q.ready, q.unacked)
                    or ("no queue " .. name)
    end, timeout or 20, 0.05, what or ("queue " .. name))
end


local function amqp_tool(self, tool, args)
    local rc, out = run(tool .. " --url=" .. shell_quote(self.url) .. " " .. args)
    if rc ~= 0 then
        error(tool .. " " .. args .. " failed (" .. tostring(rc) .. "): " .. out, 2)
    end
    return out
end


-- Declares a durable queue (amqp-declare-queue).
function Server:declare(name)
    amqp_tool(self, "amqp-declare-queue", "-d -q " .. shell_quote(name))
end


-- Publishes each string of list as one persistent message with routing key
-- key to exchange (default: the default exchange, where the key names the
-- queue): amqp-publish -l, one line one message, and it keeps the line
-- end, so a body is the string followed by "\n".
function Server:publish(key, list, exchange)
    local path = self.dir .. "/publish.txt"
    for _, v in ipairs(list) do
        if v:find("\n", 1, true) then
            error("publish: a message with a newline cannot go through amqp-publish -l", 2)
        end
    end
    write_file(path, tbl_concat(list, "\n") .. "\n")
    amqp_tool(self, "amqp-publish", "-p -l -r " .. shell_quote(key)
              .. (exchange and (" -e " .. shell_quote(exchange)) or "") .. " < "
              .. shell_quote(path))
end


-- Takes exactly n messages off the queue (amqp-consume, acking each) and
-- returns their bodies in arrival order, for bodies that end with "\n" (as
-- publish() sends them): the bodies are written out as they are and split
-- at line ends, so a body that lost its "\n" or gained one shows. Wait for
-- the messages to be there first (wait_queue): amqp-consume would
-- otherwise wait for them, up to timeout seconds.
function Server:consume(queue, n, timeout)
    if n == 0 then
        return {}
    end
    local path = self.dir .. "/consumed.txt"
    -- Generous: amqp-consume acks one message at a time, and 20,000 of them
    -- took more than 30 s once while other work shared the two cores.
    amqp_tool(self, "timeout " .. (timeout or 300) .. " amqp-consume",
              "-q " .. shell_quote(queue) .. " -c " .. n .. " cat > " .. shell_quote(path))
    local f = assert(io_open(path, "rb"))
    local s = f:read("*a")
    f:close()
    local bodies = {}
    for l in s:gmatch("([^\n]*)\n") do
        bodies[#bodies + 1] = l
    end
    if s:match("[^\n]$") then
        bodies[#bodies + 1] = s:match("([^\n]*)$") .. " (no line end)"
    end
    return bodies
end


-- Stops the node: rabbitmqctl stop, then waits for the start script to
-- exit; the process group is killed as a last resort. keep_data: for a
-- restart (the data folder stays).
function Server:stop(keep_data)
    if self.pid and not self:reaped() then
        pcall(run, "timeout " .. STOP_TIMEOUT .. " " .. self:env_prefix() .. BIN
              .. "rabbitmqctl -q -n " .. self.node .. " stop")
        local deadline = driver.now() + STOP_TIMEOUT
        while not self:reaped() and driver.now() < deadline do
            driver.sleep(0.05)
        end
        if not self:reaped() then
            psignal.kill(-self.pid, psignal.SIGKILL)
            deadline = driver.now() + 5
            while not self:reaped() and driver.now() < deadline do
                driver.sleep(0.05)
            end
        end
    end
    if self.pid then
        psignal.kill(-self.pid, psignal.SIGKILL) -- stragglers of the group (erl_child_setup)
    end
    if not keep_data then
        live[self] = nil
        run(self:env_prefix() .. "epmd -kill")
        if os_getenv("EMBER_SPEC_KEEP") == "1" then
            io.stderr:write("\n[kept " .. self.dir .. "]\n")
        elseif self.dir and #self.dir > 5 then
            run("rm -rf " .. shell_quote(self.dir))
        end
    end
end


-- A broker restart: a clean stop, then a start with the same node, ports
-- and data (durable queues and persistent messages survive).
function Server:restart()
    self:stop(true)
    self:spawn()
    self:wait_ready()
end


-- Beam processes whose command line names this node: none once stopped.
function Server:beam_pids()
    -- "[b]eam": the shell running pgrep has the pattern in its own command
    -- line, and must not match it.
    local _, out = run("pgrep -f " .. shell_quote("[b]eam.*" .. self.node))
    local pids = {}
    for p in out:gmatch("%d+") do
        pids[#pids + 1] = tonumber(p)
    end
    return pids
end


return _M
