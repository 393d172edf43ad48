-- A TCP sender for the socket-source benches (bench/wal.sh, bench/recovery.sh):
--
--   luajit bench/sender.lua PORT_FILE N SIZE
--
-- listens on an ephemeral loopback port (written to PORT_FILE once it
-- listens), sends N lines of SIZE bytes (the newline included) to the first
-- client, then keeps the connection open until the client goes away.
local socket = require "socket"
local port_file, n, size = arg[1], tonumber(arg[2]), tonumber(arg[3])
local srv = assert(socket.bind("127.0.0.1", 0))
local _, port = srv:getsockname()
local f = assert(io.open(port_file .. ".tmp", "w")); f:write(port); f:close()
os.rename(port_file .. ".tmp", port_file)
srv:settimeout(30)
local c = assert(srv:accept())
local per = 1000
local chunk = (string.rep("x", size - 1) .. "\n"):rep(per)
local sent = 0
while sent < n do
    local k = math.min(per, n - sent)
    assert(c:send(k == per and chunk or chunk:sub(1, k * size)))
    sent = sent + k
end
c:settimeout(120)
c:receive("*a") -- until ember goes away
