-- support.tcp: a TCP server on 127.0.0.1 for ember's socket source, which
-- connects as a client (like Spark's socketTextStream).
--
--   local tcp = require "support.tcp"
--   local srv = tcp.server()                   -- listening on an ephemeral port
--   ... write a job with job:socket{ host = "127.0.0.1", port = srv.port } ...
--   srv:accept(10)                             -- ember's connection, with a deadline
--   srv:send_lines({ "a b", "b c" })           -- every line gets a "\n"
--   srv:wait_read(10)                          -- ember has read all of it
--   srv:close()
--
-- Every call that waits takes a timeout in seconds and raises when it
-- passes, naming what it waited for.

local socket = require "socket"

local error = error
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local io_open = io.open
local str_format = string.format
local str_match = string.match
local tbl_concat = table.concat


local _M = {}

local Server = {}
Server.__index = Server
_M.Server = Server


local function now()
    return socket.gettime()
end


-- Binds 127.0.0.1 on a port the kernel picks and listens.
function _M.server()
    local s = assert(socket.tcp4())
    assert(s:setoption("reuseaddr", true))
    assert(s:bind("127.0.0.1", 0))
    assert(s:listen(16))
    local _, port = s:getsockname()
    return setmetatable({ listener = s, port = tonumber(port), conn = nil, sent = 0 }, Server)
end


-- Waits for a client (ember) to connect; keeps the connection as the one
-- send() writes to, replacing (and closing) an earlier one. Returns it.
function Server:accept(timeout)
    timeout = timeout or 10
    self.listener:settimeout(timeout)
    local c, err = self.listener:accept()
    if not c then
        error(str_format("no connection to 127.0.0.1:%d within %gs (%s)", self.port,
                         timeout, tostring(err)), 2)
    end
    if self.conn then
        self.conn:close()
    end
    self.conn = c
    local _, peer_port = c:getpeername()
    self.peer_port = tonumber(peer_port)
    return c
end


-- Sends data on the accepted connection, waiting at most timeout seconds
-- (default 10) for the peer to make room (a rate-limited ember reads slowly).
function Server:send(data, timeout)
    local c = self.conn
    if not c then
        error("send before accept", 2)
    end
    local deadline = now() + (timeout or 10)
    local i = 1
    while i <= #data do
        local left = deadline - now()
        if left <= 0 then
            error(str_format("sending to ember timed out: %d of %d bytes sent", i - 1, #data), 2)
        end
        c:settimeout(left)
        local last, err, partial = c:send(data, i)
        if last then
            i = last + 1
        elseif err == "timeout" then
            i = partial + 1
        else
            error("sending to ember failed: " .. tostring(err), 2)
        end
    end
    self.sent = self.sent + #data
    return #data
end


-- Sends as much of data as the peer takes within timeout seconds and
-- returns the number of bytes sent (a sender held back by backpressure).
function Server:try_send(data, timeout)
    local c = self.conn
    if not c then
        error("send before accept", 2)
    end
    local deadline = now() + timeout
    local i = 1
    while i <= #data do
        local left = deadline - now()
        if left <= 0 then
            break
        end
        c:settimeout(left)
        local last, err, partial = c:send(data, i)
        if last then
            i = last + 1
        elseif err == "timeout" then
            i = partial + 1
        else
            error("sending to ember failed: " .. tostring(err), 2)
        end
    end
    self.sent = self.sent + i - 1
    return i - 1
end


-- Sends each line followed by "\n".
function Server:send_lines(lines, timeout)
    if #lines == 0 then
        return 0
    end
    return self:send(tbl_concat(lines, "\n") .. "\n", timeout)
end


-- The send and receive queues of a TCP socket from /proc/net/tcp, by its
-- local and remote ports on 127.0.0.1: tx (sent, not acknowledged) and rx
-- (received, not read by the application). nil when not found.
local function queues(local_port, remote_port)
    local f = io_open("/proc/net/tcp", "r")
    if not f then
        return nil
    end
    local want_l = str_format("0100007F:%04X", local_port)
    local want_r = str_format("0100007F:%04X", remote_port)
    for line in f:lines() do
        local l, r, tx, rx = str_match(line,
            "^%s*%d+:%s+(%x+:%x+)%s+(%x+:%x+)%s+%x+%s+(%x+):(%x+)")
        if l == want_l and r == want_r then
            f:close()
            return tonumber(tx, 16), tonumber(rx, 16)
        end
    end
    f:close()
    return nil
end
_M.queues = queues


-- Bytes ember has not read yet: received by its socket, not taken out.
function Server:unread()
    local _, rx = queues(self.peer_port, self.port)
    return rx
end


-- Waits until ember has read from its socket every byte sent so far:
-- nothing left unacknowledged on our side, nothing unread on its side.
function Server:wait_read(timeout)
    timeout = timeout or 10
    local deadline = now() + timeout
    local tx, rx
    while true do
        tx = queues(self.port, self.peer_port)
        local _
        _, rx = queues(self.peer_port, self.port)
        if tx == 0 and rx == 0 then
            return true
        end
        if now() >= deadline then
            break
        end
        socket.sleep(0.01)
    end
    error(str_format("ember did not read everything sent within %gs: %s bytes unacknowledged, "
                     .. "%s bytes unread in its socket", timeout, tostring(tx), tostring(rx)), 2)
end


-- Closes the client connection (ember sees EOF and reconnects).
function Server:close_client()
    if self.conn then
        self.conn:close()
        self.conn = nil
    end
end


function Server:close()
    self:close_client()
    if self.listener then
        self.listener:close()
        self.listener = nil
    end
end


return _M
