-- ember.redis: pooled Redis connections for job code, and the RESP
-- encoding the to_redis sink shares.
--
--   local r = ember.redis("redis://127.0.0.1:6379")    -- in foreach_batch
--   local n, err = r:call("INCRBY", "seen", #batch)
--
-- ember.redis(url) returns the one object of that URL, holding a connection
-- borrowed from the driver's pool (core/pool.h, kind "redis", shared by
-- every job) for the rest of the batch: the executor calls release_all()
-- after each batch, which gives every borrowed connection back. An object
-- kept past its batch (an upvalue) borrows again on its next call.
--
-- call(cmd, ...) returns the reply as Lua values: a status or bulk string
-- as a string, an integer as a number, an array as a table, a nil reply as
-- ember.redis.null. An error reply, or a lost connection, returns nil, err.
--
-- r:pipeline() queues commands and sends them in one round trip:
--
--   local p = r:pipeline()
--   p:call("HGET", "campaign", "window")     -- queued; returns p
--   p:call("HSET", "window", "seen_count", 7)
--   local replies, err, i = p:exec()
--
-- exec() returns the n replies in order; an error reply is an error object
-- in its slot (ember.redis.is_error(v); v.err is its text), and err, i are
-- then the first failed command's text and index. A lost connection
-- returns nil, err. The pipeline is empty again after exec().
-- The C side is connectors/redis_sink.c (em_redis_*), reached through the FFI.

local ffi = require "ffi"

local C = ffi.C
local modules = require "ember.modules"
local ffi_new = ffi.new
local ffi_string = ffi.string
local error = error
local type = type
local tostring = tostring
local select = select
local pairs = pairs
local pcall = pcall
local setmetatable = setmetatable
local getmetatable = getmetatable
local tonumber = tonumber
local math_floor = math.floor
local str_format = string.format
local tbl_concat = table.concat


local _M = {}

if not pcall(ffi.typeof, "em_redis_conn") then
    ffi.cdef [[
        typedef struct em_redis_conn em_redis_conn;
        int em_redis_url_check(const char *url, char *err, size_t errlen);
        em_redis_conn *em_redis_borrow(const char *url, int pool_size, int timeout_ms, char *err,
                                       size_t errlen);
        void em_redis_release(em_redis_conn *c, int broken);
        const char *em_redis_conn_name(const em_redis_conn *c);
        int em_redis_pipeline(em_redis_conn *c, const char *cmds, size_t len, int n,
                              int *failed, char *err, size_t errlen);
        int em_redis_call(em_redis_conn *c, const char *cmd, size_t len, void **reply,
                          char *err, size_t errlen);
        int em_redis_exec(em_redis_conn *c, const char *cmds, size_t len, int n, void **replies,
                          char *err, size_t errlen);
        int em_redis_reply_type(const void *r);
        long long em_redis_reply_integer(const void *r);
        const char *em_redis_reply_str(const void *r, size_t *len);
        size_t em_redis_reply_count(const void *r);
        const void *em_redis_reply_elem(const void *r, size_t i);
        void em_redis_reply_free(void *r);
    ]]
end

local ERRLEN = 512
local BORROW_TIMEOUT_MS = 5000

-- hiredis reply types (read.h)
local STRING, ARRAY, INTEGER, NIL, STATUS, ERROR = 1, 2, 3, 4, 5, 6

-- The nil reply inside an array (a plain nil would end the table early).
_M.null = setmetatable({}, { __tostring = function() return "null" end })
local null = _M.null

-- An error reply inside a pipeline's replies.
local Err = { __tostring = function(e) return e.err end }
function _M.is_error(v)
    return getmetatable(v) == Err
end


-- True when this process is ember and its Redis module is loaded (the
-- em_redis_* symbols are in); load_err says why it would not load.
local available, load_err
function _M.available()
    if available == nil then
        local ok, err = modules.need("redis")
        load_err = err
        available = ok and pcall(function() return C.em_redis_borrow end) or false
    end
    return available
end


-- nil, or why url is unusable (the text never holds the password).
function _M.check_url(url)
    if type(url) ~= "string" or url == "" then
        return "a redis:// URL string expected, got " .. type(url)
    end
    if not _M.available() then
        return load_err                 -- else checked again when it is used
    end
    local err = ffi_new("char[?]", ERRLEN)
    if C.em_redis_url_check(url, err, ERRLEN) ~= 0 then
        return ffi_string(err)
    end
    return nil
end


-- RESP encoding ------------------------------------------------------------

-- Numbers go out as Redis reads them: integers without an exponent
-- ("1e+15" is not an integer to INCRBY); a number with up to 6 decimals
-- (a reading: 12.3) as exactly those, "%.<k>f": when v = a * 10^k is an
-- integer below 2^52 and v / 10^k gives a back, a is the double nearest to
-- that decimal, nearer than half its last place (a's ulp is below 10^-k),
-- so "%.<k>f" prints exactly it, which reads back as a. Any other number in the shortest of 14 or
-- 17 digits that reads back as the same number (1/3 as 0.33333333333333331).
-- The fast case costs a third of the %.14g round trip, per record.
local POW10, FIXED = {}, {}
for k = 1, 6 do
    POW10[k], FIXED[k] = 10 ^ k, "%." .. k .. "f"
end

local function arg_string(a)
    local t = type(a)
    if t == "string" then
        return a
    elseif t == "number" then
        if a == math_floor(a) and a > -2^63 and a < 2^63 then
            return str_format("%d", a)
        end
        for k = 1, 6 do
            local v = a * POW10[k]
            if v == math_floor(v) and v > -2^52 and v < 2^52 and v / POW10[k] == a then
                return str_format(FIXED[k], a)
            end
        end
        local s = str_format("%.14g", a)
        if tonumber(s) ~= a then
            s = str_format("%.17g", a)
        end
        return s
    end
    return nil
end
_M.arg_string = arg_string


local has_buffer, buffer = pcall(require, "string.buffer")

-- A growing RESP text: :command(argv, n) appends one command, :get() the
-- whole, :reset() empties it. string.buffer when this LuaJIT has it.
local function new_encoder()
    if has_buffer then
        local buf = buffer.new()
        return {
            command = function(_, argv, n)
                buf:put("*", n, "\r\n")
                for i = 1, n do
                    local a = argv[i]
                    buf:put("$", #a, "\r\n", a, "\r\n")
                end
            end,
            get = function() return buf:tostring() end,
            ref = function() return buf:ref() end,          -- ptr, len: no copy
            reset = function() buf:reset() end,
        }
    end
    local parts, m = {}, 0
    return {
        command = function(_, argv, n)
            parts[m + 1] = "*" .. n .. "\r\n"
            m = m + 1
            for i = 1, n do
                local a = argv[i]
                parts[m + 1] = "$" .. #a .. "\r\n"
                parts[m + 2] = a
                parts[m + 3] = "\r\n"
                m = m + 3
            end
        end,
        get = function() return tbl_concat(parts, "", 1, m) end,
        reset = function() m = 0 end,
    }
end
_M.new_encoder = new_encoder


-- Fills argv (a reused table) from a command given as name, args... or as
-- one table { name, args... }. Returns the count (0 when the command is
-- nil), or nil and why.
function _M.collect(argv, ...)
    local n = select("#", ...)
    local first = ...
    if first == nil then
        return 0                        -- no command: the record is skipped
    end
    if type(first) == "table" then
        local t = first
        n = #t
        for i = 1, n do
            local s = arg_string(t[i])
            if not s then
                return nil, "argument " .. i .. " is a " .. type(t[i])
            end
            argv[i] = s
        end
        return n
    end
    for i = 1, n do
        local a = select(i, ...)
        local s = arg_string(a)
        if not s then
            return nil, "argument " .. i .. " is a " .. type(a)
        end
        argv[i] = s
    end
    return n
end


-- A command as a short text for messages: HSET "last:a" "pm25" "12".
function _M.describe(argv, n)
    local out = { argv[1] }
    for i = 2, (n < 8 and n or 8) do
        local a = argv[i]
        if #a > 40 then
            a = a:sub(1, 40) .. "..."
        end
        out[i] = str_format("%q", a):gsub("\\\n", "\\n")
    end
    if n > 8 then
        out[#out + 1] = "... (" .. n .. " arguments)"
    end
    return tbl_concat(out, " ")
end


-- Connections ------------------------------------------------------------

-- Borrows a pooled connection: the cdata pointer, or nil and err.
function _M.borrow_raw(url)
    if not _M.available() then
        return nil, load_err or "Redis connections need the ember driver (em_redis_* not linked)"
    end
    local err = ffi_new("char[?]", ERRLEN)
    local c = C.em_redis_borrow(url, require("ember.sinks").pool_size, BORROW_TIMEOUT_MS, err,
                               ERRLEN)
    if c == nil then
        return nil, ffi_string(err)
    end
    return c
end

function _M.release_raw(c, broken)
    C.em_redis_release(c, broken and 1 or 0)
end

function _M.conn_name(c)
    return ffi_string(C.em_redis_conn_name(c))
end


-- Sends the RESP text of n commands on c and reads every reply. Returns
-- true; or nil, "reply", index (1-based) of the first error reply, text;
-- or nil, "io", text (the connection is broken).
local failed_box = ffi_new("int[1]")
local errbuf = ffi_new("char[?]", ERRLEN)
function _M.pipeline(c, ptr, len, n)
    local rc = C.em_redis_pipeline(c, ptr, len, n, failed_box, errbuf, ERRLEN)
    if rc == 0 then
        return true
    elseif rc == -1 then
        return nil, "reply", failed_box[0] + 1, ffi_string(errbuf)
    end
    return nil, "io", ffi_string(errbuf)
end


local function to_lua(r)
    local t = C.em_redis_reply_type(r)
    if t == STRING or t == STATUS then
        local len = ffi_new("size_t[1]")
        local p = C.em_redis_reply_str(r, len)
        return ffi_string(p, len[0])
    elseif t == INTEGER then
        return tonumber(C.em_redis_reply_integer(r))
    elseif t == ARRAY then
        local out = {}
        for i = 0, tonumber(C.em_redis_reply_count(r)) - 1 do
            out[i + 1] = to_lua(C.em_redis_reply_elem(r, i))
        end
        return out
    elseif t == NIL then
        return null
    end
    return null
end


-- One object per URL (per job state, for the life of the state); it holds
-- a pooled connection from its first use in a batch to the batch's end.
local objects = {}                      -- url -> object
local holding = {}                      -- object -> true while it has a connection
local hooked = false

local Conn = {}
Conn.__index = Conn


local function attach(self)
    local c, err = _M.borrow_raw(self.url)
    if not c then
        return nil, err
    end
    self.c = c
    holding[self] = true
    if not hooked then
        -- The executor runs these after every batch (ember._on_batch_end).
        local ok, ember = pcall(require, "ember")
        if ok and ember._on_batch_end then
            ember._on_batch_end(_M.release_all)
        end
        hooked = true
    end
    return true
end


-- ember.redis(url): the connection object for url, borrowed for this batch.
-- Raises on a bad argument; returns nil, err when no connection can be had.
function _M.borrow(url)
    local bad = _M.check_url(url)
    if bad then
        error("bad argument #1 to 'redis' (" .. bad .. ")", 2)
    end
    local obj = objects[url]
    if not obj then
        obj = setmetatable({ url = url }, Conn)
        objects[url] = obj
    end
    if not obj.c then
        local ok, err = attach(obj)
        if not ok then
            return nil, err
        end
    end
    return obj
end


local call_argv = {}
local call_enc

-- r:call(cmd, ...) or r:call{cmd, ...}: the reply as Lua values, or nil, err.
function Conn:call(...)
    if select("#", ...) == 0 or (...) == nil then
        error("bad argument #1 to 'call' (a command name expected)", 2)
    end
    local n, why = _M.collect(call_argv, ...)
    if not n then
        error("bad argument to 'call' (" .. why .. "; strings and numbers expected)", 2)
    end
    if not self.c then
        local ok, err = attach(self)
        if not ok then
            return nil, err
        end
    end
    call_enc = call_enc or new_encoder()
    call_enc:reset()
    call_enc:command(call_argv, n)
    local text = call_enc:get()
    local box = ffi_new("void *[1]")
    local rc = C.em_redis_call(self.c, text, #text, box, errbuf, ERRLEN)
    if rc ~= 0 then
        local err = ffi_string(errbuf)
        C.em_redis_release(self.c, 1)
        self.c = nil
        holding[self] = nil
        return nil, err
    end
    local r = box[0]
    local res, err
    if C.em_redis_reply_type(r) == ERROR then
        local len = ffi_new("size_t[1]")
        err = ffi_string(C.em_redis_reply_str(r, len), len[0])
    else
        local ok, v = pcall(to_lua, r)
        if ok then
            res = v
        else
            err = tostring(v)
        end
    end
    C.em_redis_reply_free(r)
    if err then
        return nil, err
    end
    return res
end


-- r:pipeline(): commands queued and sent together by exec().
local Pipeline = {}
Pipeline.__index = Pipeline

function Conn:pipeline()
    return setmetatable({ conn = self, enc = new_encoder(), n = 0, argv = {} }, Pipeline)
end

-- p:call(cmd, ...) or p:call{cmd, ...}: queues one command; returns p.
function Pipeline:call(...)
    if select("#", ...) == 0 or (...) == nil then
        error("bad argument #1 to 'call' (a command name expected)", 2)
    end
    local n, why = _M.collect(self.argv, ...)
    if not n then
        error("bad argument to 'call' (" .. why .. "; strings and numbers expected)", 2)
    end
    self.enc:command(self.argv, n)
    self.n = self.n + 1
    return self
end

-- The number of commands queued.
function Pipeline:count()
    return self.n
end

-- Sends every queued command in one write and reads their replies:
-- replies (error replies as error objects), then the first error's text
-- and index, or nil, err when the connection was lost.
function Pipeline:exec()
    local n = self.n
    if n == 0 then
        return {}
    end
    local conn = self.conn
    local text = self.enc:get()
    self.enc:reset()
    self.n = 0
    if not conn.c then
        local ok, err = attach(conn)
        if not ok then
            return nil, err
        end
    end
    local box = ffi_new("void *[?]", n)
    local rc = C.em_redis_exec(conn.c, text, #text, n, box, errbuf, ERRLEN)
    if rc ~= 0 then
        local err = ffi_string(errbuf)
        C.em_redis_release(conn.c, 1)
        conn.c = nil
        holding[conn] = nil
        return nil, err
    end
    local out, first, at = {}, nil, nil
    local len = ffi_new("size_t[1]")
    for i = 1, n do
        local r = box[i - 1]
        if C.em_redis_reply_type(r) == ERROR then
            local e = ffi_string(C.em_redis_reply_str(r, len), len[0])
            out[i] = setmetatable({ err = e }, Err)
            if not first then
                first, at = e, i
            end
        else
            local ok, v = pcall(to_lua, r)
            if ok then
                out[i] = v
            else
                out[i] = setmetatable({ err = tostring(v) }, Err)
                if not first then
                    first, at = tostring(v), i
                end
            end
        end
        C.em_redis_reply_free(r)
    end
    return out, first, at
end


-- Gives every connection borrowed by ember.redis() back to its pool. The
-- executor calls it after each batch; calling it more often is harmless.
function _M.release_all()
    for obj in pairs(holding) do
        if obj.c then
            C.em_redis_release(obj.c, 0)
            obj.c = nil
        end
        holding[obj] = nil
    end
end


return _M
