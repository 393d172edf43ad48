-- support.recovery: helpers of the recovery specs (spec/recovery/).
--
--   local rec = require "support.recovery"
--   rec.crc32("bytes")                   -- zlib's crc32, as ember checksums with
--   rec.wal_frame("value")               -- one write-ahead log record, framed as core/wal.h says
--   rec.checkpoint_text{...}             -- a checkpoint file as core/checkpoint.c renders it
--   rec.parse_checkpoint(text)           -- its fields, and whether its crc32 line is right
--   rec.rss_kb(pid)                      -- VmRSS of a process, from /proc/<pid>/status
--   rec.restart(d, opts)                 -- d:start(opts) without the last run's log
--   local s = rec.sender()               -- a TCP server sending 1, 2, 3, ... to ember
--   s:accept(10); s:pump(0.5, 8000)      -- ember connected; half a second at 8000 lines/s
--   s:queue(50000); s:flush(30)          -- a backlog, sent as fast as ember takes it
--   rec.check_sequence(s.conns, lines)   -- what ember's output says about loss and duplicates
--
-- Everything that waits has a deadline and raises when it passes.

local bit = require "bit"
local socket = require "socket"
local tcp = require "support.tcp"

local band, bor, bxor, rshift, bnot = bit.band, bit.bor, bit.bxor, bit.rshift, bit.bnot
local str_char = string.char
local str_byte = string.byte
local str_format = string.format
local str_match = string.match
local tbl_concat = table.concat
local floor = math.floor
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local error = error
local io_open = io.open


local _M = {}


local function now()
    return socket.gettime()
end


-- CRC-32 (IEEE 802.3, reflected, as zlib's crc32()), as an unsigned number.
local CRC = {}
for i = 0, 255 do
    local c = i
    for _ = 1, 8 do
        if band(c, 1) ~= 0 then
            c = bxor(rshift(c, 1), 0xEDB88320)
        else
            c = rshift(c, 1)
        end
    end
    CRC[i] = c
end

function _M.crc32(s)
    local c = bnot(0)
    for i = 1, #s do
        c = bxor(CRC[band(bxor(c, str_byte(s, i)), 0xFF)], rshift(c, 8))
    end
    c = bnot(c)
    return c < 0 and c + 2 ^ 32 or c
end


-- Little-endian unsigned 32 and 64 bit integers (n >= 0, below 2^53).
local function u32(n)
    n = n % 2 ^ 32
    return str_char(n % 256, floor(n / 2 ^ 8) % 256, floor(n / 2 ^ 16) % 256,
                    floor(n / 2 ^ 24) % 256)
end

local function u64(n)
    if n < 0 then
        n = n + 2 ^ 64 -- only -1 is used: all ones
    end
    return u32(n % 2 ^ 32) .. u32(floor(n / 2 ^ 32))
end
_M.u32 = u32


-- One write-ahead log record (core/wal.h): "EMW1", u32 payload length,
-- u32 crc32 of the payload, then the payload: i64 ts, i64 offset,
-- i32 partition, u32 value, key and meta lengths (0xFFFFFFFF: no key),
-- the bytes. opts: ts (ms), offset, partition, key, meta.
function _M.wal_frame(value, opts)
    opts = opts or {}
    local key, meta = opts.key, opts.meta or ""
    local payload = tbl_concat {
        u64(opts.ts or 1700000000000), u64(opts.offset or -1),
        u32(opts.partition or 2 ^ 32 - 1),
        u32(#value), key and u32(#key) or u32(2 ^ 32 - 1), u32(#meta),
        value, key or "", meta,
    }
    return "EMW1" .. u32(#payload) .. u32(_M.crc32(payload)) .. payload
end


-- The folder of a job's n-th source's write-ahead log and a segment name
-- in it, the way ember names them (zero-padded, so name order is age).
function _M.wal_dir(job_dir, n, connector)
    return str_format("%s/wal/%d-%s", job_dir, n, connector)
end

function _M.segment_name(seq)
    return str_format("%020d.wal", seq)
end


function _M.write_bytes(path, bytes)
    local f = assert(io_open(path, "wb"))
    assert(f:write(bytes))
    assert(f:close())
end

function _M.read_bytes(path)
    local f = io_open(path, "rb")
    if not f then
        return nil
    end
    local s = f:read("*a")
    f:close()
    return s
end


-- A checkpoint file as core/checkpoint.c renders it: the lines, then
-- "crc32 <8 hex digits>" over every byte before that line. Format 2 (the
-- default) has the batch id, then "pos" and "wal" lines; format 1 a
-- "state 0" placeholder instead.
function _M.checkpoint_text(cp)
    local format = cp.format or 2
    local body = str_format("ember-checkpoint %d\njob %s\nstate_version %s\nlast_batch %s\n"
                            .. "batches %s\n", format, cp.job, cp.state_version or "-",
                            tostring(cp.last_batch), tostring(cp.batches))
    if format == 1 then
        body = body .. "state 0\n"
    else
        body = body .. str_format("batch_id %s\n", tostring(cp.batch_id or 0))
        for _, p in ipairs(cp.positions or {}) do
            body = body .. "pos " .. p .. "\n"
        end
        for _, w in ipairs(cp.wal or {}) do
            body = body .. "wal " .. w .. "\n"
        end
    end
    return body .. str_format("crc32 %08x\n", _M.crc32(body))
end


-- The fields of a checkpoint file and whether its checksum holds:
-- { format=, job=, state_version=, last_batch=, batches=, batch_id=,
--   positions = { "<source> <position>", ... }, wal = { ... }, crc_ok= }.
function _M.parse_checkpoint(text)
    if not text then
        return nil
    end
    local at = text:find("crc32 ", 1, true)
    local cp = {
        format = tonumber(str_match(text, "^ember%-checkpoint (%d+)\n")),
        job = str_match(text, "\njob ([^\n]*)\n"),
        state_version = str_match(text, "\nstate_version ([^\n]*)\n"),
        last_batch = tonumber(str_match(text, "\nlast_batch (%d+)\n")),
        batches = tonumber(str_match(text, "\nbatches (%d+)\n")),
        batch_id = tonumber(str_match(text, "\nbatch_id (%d+)\n")),
        positions = {},
        wal = {},
        crc_ok = false,
    }
    for p in text:gmatch("\npos ([^\n]*)") do
        cp.positions[#cp.positions + 1] = p
    end
    for w in text:gmatch("\nwal ([^\n]*)") do
        cp.wal[#cp.wal + 1] = w
    end
    if at then
        local want = tonumber(str_match(text, "^crc32 (%x+)\n", at), 16)
        cp.crc_ok = want ~= nil and want == _M.crc32(text:sub(1, at - 1))
    end
    return cp
end


-- VmRSS of a live process in kB, or nil.
function _M.rss_kb(pid)
    local f = io_open("/proc/" .. tostring(pid) .. "/status", "r")
    if not f then
        return nil
    end
    local s = f:read("*a")
    f:close()
    return tonumber(str_match(s, "VmRSS:%s*(%d+)"))
end


-- Starts ember again on the same folder. The previous run's log is
-- removed first: the driver truncates it in the child after fork, so a
-- wait_for_log right after start() could otherwise match the old run.
function _M.restart(d, opts)
    os.remove(d.stderr_path)
    os.remove(d.stdout_path)
    return d:start(opts)
end


-- Names in a folder (nil when it does not exist), sorted.
function _M.list_dir(dir)
    local ok, dirent = pcall(require, "posix.dirent")
    if not ok then
        error("posix.dirent is needed", 2)
    end
    local stat = require "posix.sys.stat"
    if not stat.stat(dir) then
        return nil
    end
    local names = {}
    for name in dirent.files(dir) do
        if name ~= "." and name ~= ".." then
            names[#names + 1] = name
        end
    end
    table.sort(names)
    return names
end


---------------------------------------------------------------------------
-- A sender of a numbered sequence: the TCP server ember's socket source
-- connects to. Numbers are never sent twice: after ember reconnects, the
-- sequence goes on where it was. Each connection remembers the numbers
-- put on it (first..last), the bytes the kernel took (sent), and, when
-- marked before a kill, the bytes still in the kernel's queues then.

local Sender = {}
Sender.__index = Sender
_M.Sender = Sender


-- opts.prefix: text before each number ("b" sends b1, b2, ...).
function _M.sender(opts)
    opts = opts or {}
    return setmetatable({ srv = tcp.server(), next = 1, conns = {}, prefix = opts.prefix or "" },
                        Sender)
end


function Sender:port()
    return self.srv.port
end


-- Waits for ember to connect; the connection before, if any, is closed.
function Sender:accept(timeout)
    local c = self.srv:accept(timeout or 10)
    c:settimeout(0)
    self.conn = { sock = c, first = self.next, last = self.next - 1, sent = 0,
                  queued = 0, pending = nil, pos = 1, peer_port = self.srv.peer_port }
    self.conns[#self.conns + 1] = self.conn
    return self.conn
end


-- Puts the numbers next..next+n-1 on the current connection's queue
-- (sent by push, pump and flush).
function Sender:queue(n)
    local c = self.conn
    local t = {}
    for i = 1, n do
        t[i] = self.prefix .. (self.next + i - 1)
    end
    c.pending = tbl_concat(t, "\n") .. "\n"
    c.pos = 1
    c.last = self.next + n - 1
    c.queued = c.queued + #c.pending
    self.next = self.next + n
end


-- Hands the kernel what it takes of the queue, without waiting. Returns
-- false when the connection is gone.
function Sender:push()
    local c = self.conn
    if not c.pending then
        return true
    end
    local last, err, partial = c.sock:send(c.pending, c.pos)
    local upto = last or partial or (c.pos - 1)
    c.sent = c.sent + (upto - c.pos + 1)
    c.pos = upto + 1
    if c.pos > #c.pending then
        c.pending = nil
    end
    return err == nil or err == "timeout"
end


-- Sends the sequence at `rate` lines/s for `seconds`, as fast as the
-- kernel takes it (a held-back ember makes the queue grow, never the
-- pace). Returns the number of lines queued.
function Sender:pump(seconds, rate)
    local c = self.conn
    if not c then
        error("pump before accept", 2)
    end
    local t0 = now()
    local deadline = t0 + seconds
    local made = 0
    while true do
        local t = now()
        if t >= deadline then
            break
        end
        if not c.pending then
            local due = floor((t - t0) * rate) - made
            if due > 0 then
                due = due > 4096 and 4096 or due
                self:queue(due)
                made = made + due
            end
        end
        if not self:push() then
            break
        end
        socket.sleep(0.002)
    end
    return made
end


-- Sends whatever is still pending, waiting at most timeout seconds.
function Sender:flush(timeout)
    local c = self.conn
    local deadline = now() + (timeout or 10)
    while c.pending do
        if not self:push() then
            error("the connection to ember is gone with " .. (#c.pending - c.pos + 1)
                  .. " bytes unsent", 2)
        end
        if c.pending then
            if now() >= deadline then
                error(str_format("ember did not take %d pending bytes within %gs",
                                 #c.pending - c.pos + 1, timeout or 10), 2)
            end
            socket.sleep(0.002)
        end
    end
end


-- Notes the kernel queues of the connection (bytes not yet acknowledged
-- on our side, not yet read on ember's): call it right before a kill.
function Sender:mark_queues()
    local c = self.conn
    local tx = tcp.queues(self.srv.port, c.peer_port)
    local _, rx = tcp.queues(c.peer_port, self.srv.port)
    c.tx, c.rx = tx or 0, rx or 0
    return c.tx, c.rx
end


-- Waits until ember read every byte sent on the current connection.
function Sender:wait_read(timeout)
    self.srv:wait_read(timeout)
end


function Sender:close_conn()
    if self.conn then
        self.conn.sock:close()
        self.conn.pending = nil
        self.conn = nil
    end
end


function Sender:close()
    self:close_conn()
    self.srv:close()
end


-- What the output says about the sequence. lines: every output line (a
-- number each, after prefix). Per connection: the highest number of it that appears
-- (`top`); numbers of it after `top` were still in the kernel's or the
-- connector's buffers when ember died ("unread", lost by design); every
-- number up to `top` must appear. Returns
-- { missing = {n...}, dups = n, appearances = n, distinct = n,
--   per_conn = { {first, last, top, unread, lost_bytes, missing, sent, tx, rx}... },
--   foreign = {line...} } (lines that are no number of the sequence).
function _M.check_sequence(conns, lines, prefix)
    prefix = prefix or ""
    local pat = "^" .. prefix:gsub("%p", "%%%0") .. "(%d+)$"
    local seen, foreign = {}, {}
    local appearances = 0
    for _, line in ipairs(lines) do
        local n = tonumber(str_match(line, pat))
        if n then
            seen[n] = (seen[n] or 0) + 1
            appearances = appearances + 1
        else
            foreign[#foreign + 1] = line
        end
    end
    local distinct, dups = 0, 0
    for _, k in pairs(seen) do
        distinct = distinct + 1
        dups = dups + k - 1
    end
    local res = { missing = {}, dups = dups, appearances = appearances, distinct = distinct,
                  per_conn = {}, foreign = foreign }
    for i, c in ipairs(conns) do
        local top = c.first - 1
        for n = c.last, c.first, -1 do
            if seen[n] then
                top = n
                break
            end
        end
        local missing = 0
        for n = c.first, top do
            if not seen[n] then
                missing = missing + 1
                res.missing[#res.missing + 1] = n
            end
        end
        -- Bytes the kernel took on this connection that never came out:
        -- what was sent past the line of `top`.
        local through_top = 0
        for n = c.first, top do
            through_top = through_top + #prefix + #tostring(n) + 1
        end
        local lost_bytes = c.sent - through_top
        res.per_conn[i] = { first = c.first, last = c.last, top = top, unread = c.last - top,
                            lost_bytes = lost_bytes > 0 and lost_bytes or 0, missing = missing,
                            sent = c.sent, queued = c.queued, tx = c.tx, rx = c.rx }
    end
    return res
end


return _M
