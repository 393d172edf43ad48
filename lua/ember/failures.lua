-- ember.failures: a job's on_error policy, applied to the errors of one batch.
--
--   skip         count the record, go on; one "warn" log line per batch
--   dead_letter  count it and append a JSON line to
--                <checkpoint_dir>/<job>/dead_letter.jsonl; one log line per batch
--   fail         stop the batch; the driver stops the job (fatal)
--
-- One log line per batch, not per record: a job whose map raises on every
-- record must not flood the log at the input rate.
--
-- Dead letters (docs/lua-api.md, "Dead letters"):
--   * every line is valid JSON: control characters are escaped, an error
--     text that is not UTF-8 has its stray bytes written as \xNN, and a
--     record that is not UTF-8 is written base64-encoded as "record_base64"
--     instead of "record";
--   * the lines of a batch are written with one write(2) and cut back with
--     ftruncate(2) when it fails part way (a full disk): whole lines or none;
--   * the file is rotated past MAX_BYTES into dead_letter.jsonl.1 .. .KEEP.

local sinks = require "ember.sinks"
local ffi = require "ffi"

local type = type
local tonumber = tonumber
local tostring = tostring
local setmetatable = setmetatable
local pcall = pcall
local os_rename = os.rename
local os_remove = os.remove
local str_format = string.format
local str_gsub = string.gsub
local str_sub = string.sub
local str_byte = string.byte
local str_find = string.find
local tbl_concat = table.concat
local bit = require "bit"
local band, rshift, lshift, bor = bit.band, bit.rshift, bit.lshift, bit.bor


local _M = {}
local mt = { __index = _M }

local EXCERPT = 200
_M.MAX_BYTES = 64 * 1024 * 1024   -- a dead-letter file is rotated past this
_M.KEEP = 3                       -- rotated files kept: .1 (newest) .. .3
local FLUSH_BYTES = 1024 * 1024   -- lines of a batch buffered before a write


if not pcall(ffi.typeof, "struct ember_dl_probe") then
    ffi.cdef [[
        struct ember_dl_probe { int unused; };
        int open(const char *path, int flags, ...);
        long write(int fd, const void *buf, size_t n);
        long lseek(int fd, long offset, int whence);
        int ftruncate(int fd, long length);
        int close(int fd);
        char *strerror(int errnum);
    ]]
end
local C = ffi.C
local O_WRONLY, O_CREAT, O_APPEND, O_CLOEXEC = 1, 64, 1024, 524288
local SEEK_END = 2
local EINTR = 4
-- open's mode is a vararg: a Lua number would go as a double (and open
-- would read garbage, here a file of mode 0000), so a C int.
local MODE_0644 = ffi.new("int", 420)

local function errstr()
    return ffi.string(C.strerror(ffi.errno()))
end


-- 1 when s is valid UTF-8 (no overlongs, no surrogates, at most U+10FFFF).
local function is_utf8(s)
    if not str_find(s, "[\128-\255]") then
        return true
    end
    local i, n = 1, #s
    while i <= n do
        local c = str_byte(s, i)
        local len, min
        if c < 0x80 then
            len = 1
        elseif c >= 0xC2 and c <= 0xDF then
            len, min = 2, 0x80
        elseif c >= 0xE0 and c <= 0xEF then
            len, min = 3, 0x800
        elseif c >= 0xF0 and c <= 0xF4 then
            len, min = 4, 0x10000
        else
            return false
        end
        if len > 1 then
            if i + len - 1 > n then
                return false
            end
            local cp = band(c, rshift(0xFF, len + 1))
            for k = i + 1, i + len - 1 do
                local cc = str_byte(s, k)
                if band(cc, 0xC0) ~= 0x80 then
                    return false
                end
                cp = bor(lshift(cp, 6), band(cc, 0x3F))
            end
            if cp < min or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then
                return false
            end
        end
        i = i + len
    end
    return true
end
_M.is_utf8 = is_utf8


-- Replaces the bytes of s that are not part of valid UTF-8 by "\xNN".
local function clean_utf8(s)
    if is_utf8(s) then
        return s
    end
    local out, i, n = {}, 1, #s
    while i <= n do
        local ok = false
        for len = 1, 4 do
            local piece = str_sub(s, i, i + len - 1)
            if #piece == len and is_utf8(piece) and (len == 1 or str_byte(piece) >= 0xC2) then
                out[#out + 1] = piece
                i = i + len
                ok = true
                break
            end
        end
        if not ok then
            out[#out + 1] = str_format("\\x%02X", str_byte(s, i))
            i = i + 1
        end
    end
    return tbl_concat(out)
end
_M.clean_utf8 = clean_utf8


local ESC = { ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t',
              ['\b'] = '\\b', ['\f'] = '\\f' }

-- A JSON string of valid UTF-8 s: quotes, backslashes and control
-- characters escaped, "/" left as it is.
local function json_string(s)
    return '"' .. str_gsub(s, '[%z\1-\31"\\\127]', function(c)
        return ESC[c] or str_format("\\u%04x", str_byte(c))
    end) .. '"'
end
_M.json_string = json_string


local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64T = {}
for i = 1, 64 do B64T[i - 1] = str_sub(B64, i, i) end

local function base64(s)
    local out, n = {}, #s
    for i = 1, n, 3 do
        local a, b, c = str_byte(s, i, i + 2)
        local v = lshift(a, 16) + lshift(b or 0, 8) + (c or 0)
        out[#out + 1] = B64T[band(rshift(v, 18), 63)] .. B64T[band(rshift(v, 12), 63)]
                        .. (b and B64T[band(rshift(v, 6), 63)] or "=")
                        .. (c and B64T[band(v, 63)] or "=")
    end
    return tbl_concat(out)
end
_M.base64 = base64


-- One dead letter, a whole JSON line.
function _M.line(job, batch_time, err, record)
    local rec
    if is_utf8(record) then
        rec = ',"record":' .. json_string(record)
    else
        rec = ',"record_base64":"' .. base64(record) .. '"'
    end
    return '{"job":' .. json_string(clean_utf8(job)) .. ',"batch_time":' .. str_format("%d", batch_time)
           .. ',"error":' .. json_string(clean_utf8(err)) .. rec .. '}\n'
end


-- The first bytes of a record, control characters escaped, for a log line.
local function excerpt(s)
    s = tostring(s)
    local more = #s > EXCERPT
    s = str_gsub(str_sub(s, 1, EXCERPT), "[%z\1-\31\127]", function(c)
        return str_format("\\%d", c:byte())
    end)
    return more and (s .. "...") or s
end
_M.excerpt = excerpt


-- host: the runtime's host table (log, checkpoint_dir, stopped_by).
function _M.new(job_name, policy, host)
    local dir = (host and host.checkpoint_dir or "checkpoint") .. "/" .. job_name
    return setmetatable({
        job = job_name,
        policy = policy,
        host = host,
        dir = dir,
        path = dir .. "/dead_letter.jsonl",
        count = 0,
    }, mt)
end


function _M:begin(time_ms)
    self.time = time_ms
    self.fatal = nil
    self.count = 0
    self.first_err, self.first_rec = nil, nil
    self.io_err = nil
    self.pending, self.pending_bytes, self.pending_n = {}, 0, 0
end


-- Moves dead_letter.jsonl to .1, .1 to .2, ...; the oldest past KEEP goes.
local function rotate(path)
    os_remove(path .. "." .. _M.KEEP)
    for i = _M.KEEP - 1, 1, -1 do
        os_rename(path .. "." .. i, path .. "." .. (i + 1))
    end
    os_rename(path, path .. ".1")
end


-- Appends data (whole lines) to the dead-letter file with one write, or
-- leaves the file as it was: nil and why.
local function write_whole(self, data)
    local ok, err = sinks.mkdir_p(self.dir)
    if not ok then
        return nil, tostring(err)
    end
    local flags = O_WRONLY + O_CREAT + O_APPEND + O_CLOEXEC
    local fd = C.open(self.path, flags, MODE_0644)
    if fd < 0 then
        return nil, errstr()
    end
    local size = C.lseek(fd, 0, SEEK_END)
    if size > 0 and size + #data > _M.MAX_BYTES then
        C.close(fd)
        rotate(self.path)
        fd = C.open(self.path, flags, MODE_0644)
        if fd < 0 then
            return nil, errstr()
        end
        size = 0
    end
    local done, n = 0, #data
    while done < n do
        local w = C.write(fd, ffi.cast("const char *", data) + done, n - done)
        if w < 0 and ffi.errno() ~= EINTR then
            local why = errstr()
            C.ftruncate(fd, size)   -- no torn line
            C.close(fd)
            return nil, why
        elseif w >= 0 then
            done = done + tonumber(w)
        end
    end
    if C.close(fd) ~= 0 then
        return nil, errstr()
    end
    return true
end


-- Writes the buffered dead letters of the batch; a failure is kept as
-- the batch's io_err.
local function flush(self)
    if self.pending_n == 0 or self.io_err then
        return not self.io_err
    end
    local n = self.pending_n
    local ok, why = write_whole(self, tbl_concat(self.pending))
    self.pending, self.pending_bytes, self.pending_n = {}, 0, 0
    if not ok then
        self.io_err = str_format("cannot write dead letters to %s: %s (%d record%s not written; the "
                                 .. "batch is not acknowledged)", self.path, why, n,
                                 n == 1 and "" or "s")
        local stopped_by = self.host and self.host.stopped_by
        if stopped_by then
            pcall(stopped_by, "dead letters unwritable")
        end
        return false
    end
    return true
end


-- Records one failure: err the error value, record the raw record or a
-- description of the element or output run. Returns true when the batch
-- must stop (policy fail, or a dead letter that could not be written).
function _M:add(err, record)
    if self.fatal then
        return true                     -- the batch fails whatever on_error says
    end
    err = type(err) == "string" and err or tostring(err)
    record = tostring(record)
    self.count = self.count + 1
    if self.count == 1 then
        self.first_err, self.first_rec = err, record
    end

    local policy = self.policy
    if policy == "fail" then
        return true
    end
    if policy == "dead_letter" then
        if self.io_err then
            return true
        end
        local line = _M.line(self.job, self.time or 0, err, record)
        local p = self.pending
        if not p then
            self:begin(self.time or 0)
            p = self.pending
        end
        p[#p + 1] = line
        self.pending_n = self.pending_n + 1
        self.pending_bytes = self.pending_bytes + #line
        if self.pending_bytes >= FLUSH_BYTES and not flush(self) then
            return true
        end
    end
    return false
end


-- Ends the batch: writes the dead letters, logs once. Returns the number
-- of failures, the first error (or nil) and, when the batch must be
-- reported as fatal because the dead letters could not be written, that
-- error.
function _M:finish()
    if self.policy == "dead_letter" then
        flush(self)
    end

    local n = self.count
    if n == 0 then
        return 0, nil, self.io_err
    end

    local log = self.host and self.host.log
    if log then
        local what
        if self.io_err then
            what = "; " .. self.io_err .. "; stopping the job"
        elseif self.policy == "fail" then
            what = " (on_error = fail: stopping the job)"
        elseif self.policy == "dead_letter" then
            what = ", written to " .. self.path
        else
            what = ", skipped"
        end
        local msg = str_format("batch %d: %d record%s failed%s; first error: %s; record: %s",
                               self.time or 0, n, n == 1 and "" or "s", what,
                               self.first_err, excerpt(self.first_rec))
        pcall(log, (self.policy == "fail" or self.io_err) and "error" or "warn",
              self.job, msg)
    end
    return n, self.first_err, self.io_err
end


return _M
