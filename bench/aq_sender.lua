-- The TCP sender of bench/air_quality.sh's socket run:
--
--   luajit bench/aq_sender.lua PORT_FILE FILE
--
-- listens on an ephemeral loopback port (written to PORT_FILE once it
-- listens), sends FILE to the first client in 1 MiB writes, then keeps the
-- connection open until the client goes away (a close would be the end of
-- the stream, not part of the measure).
local socket = require "socket"
local port_file, path = arg[1], arg[2]
local srv = assert(socket.bind("127.0.0.1", 0))
local _, port = srv:getsockname()
local f = assert(io.open(port_file .. ".tmp", "w")); f:write(port); f:close()
os.rename(port_file .. ".tmp", port_file)
srv:settimeout(30)
local c = assert(srv:accept())
local src = assert(io.open(path, "rb"))
while true do
    local chunk = src:read(1048576)
    if not chunk then break end
    local i = 1
    while i <= #chunk do
        local last, err, partial = c:send(chunk, i)
        assert(last or err == "timeout", err)
        i = (last or partial) + 1
    end
end
src:close()
c:settimeout(600)
c:receive("*a") -- until ember goes away
