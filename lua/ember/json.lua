-- ember.json: a JSON decoder built for streams of small records.
--
--   local json = require "ember.json"       -- also ember.json
--   local p = json.decode('{"device":"a","pm25":12.5}')   -- p.device, p.pm25
--   job:kafka { ..., format = "json" }       -- elements arrive decoded
--   local f = json.projection { "device" }   -- f(ptr, len): only .device
--
-- decode(s) returns the value of one JSON text: objects and arrays become
-- tables, strings strings, numbers numbers, true/false booleans. null is
-- nil in an object (the field is absent, so `p.x == nil` covers both) and
-- json.null in an array (an array keeps its length). Malformed input
-- raises "json: <what> at byte <n>", so in a map it follows the job's
-- on_error policy with the record in hand.
--
-- Why not cjson: cjson builds each table through the Lua C API, which the
-- JIT cannot compile, and interns every key again for every record. Here
-- C (core/json.c) tokenizes the text into a tape in one pass, numbers
-- included, and Lua builds the tables from the tape in code the JIT
-- compiles into the job's loop: tables are created at their final size,
-- and the keys of the last top-level object are remembered by position, so
-- records of one stream, which share a layout, compare their keys in place
-- instead of hashing them.

local ffi = require "ffi"
local new_tab = require "table.new"

local ffi_string = ffi.string
local ffi_cast = ffi.cast
local ffi_new = ffi.new
local error = error
local type = type
local tonumber = tonumber
local pcall = pcall
local setmetatable = setmetatable
local ipairs = ipairs
local str_format = string.format
local str_char = string.char
local tbl_concat = table.concat
local bit_band, bit_bor, bit_rshift = bit.band, bit.bor, bit.rshift


if not pcall(ffi.typeof, "em_json_tok") then
    ffi.cdef [[
        typedef struct em_json_tok {
            uint32_t type, off, len, skip;
            double num;
        } em_json_tok;
        int em_json_scan(const char *s, size_t len, em_json_tok *tape, int cap, size_t *where);
    ]]
end
pcall(ffi.cdef, "int memcmp(const void *a, const void *b, size_t n);")

-- Inside ember the tokenizer is linked in; a plain luajit (the unit specs,
-- tools) loads the copy `make` builds beside the Lua folder.
local C = ffi.C
if not pcall(function() return C.em_json_scan end) then
    local here = debug.getinfo(1, "S").source:match("^@(.*)/ember/json%.lua$") or "lua"
    C = ffi.load(os.getenv("EMBER_JSON_LIB") or (here .. "/../build/libember-json.so"))
end
local memcmp = ffi.C.memcmp

-- core/json.h (EM_JSON_FALSE, 7, is whatever is neither TRUE nor NULL there)
local OBJECT, ARRAY, STRING, STRING_ESC, NUMBER, TRUE, NULL = 1, 2, 3, 4, 5, 6, 8
local FULL, DEEP = -2, -3               -- EM_JSON_SYNTAX: any other negative

local bytes_t = ffi.typeof("const uint8_t *")
local tape_t = ffi.typeof("em_json_tok[?]")


local _M = {}

_M.null = setmetatable({}, { __tostring = function() return "null" end })
local null = _M.null

local tape_cap = 256
local tape = ffi_new(tape_t, tape_cap)
local where = ffi_new("size_t[1]")

-- The top-level object's keys by position, from the last object decoded.
local key_cache, key_cache_len = {}, {}


local function fail(what, i)
    error(str_format("json: %s at byte %d", what, i + 1), 0)
end


local function utf8(cp)
    if cp < 0x80 then
        return str_char(cp)
    elseif cp < 0x800 then
        return str_char(bit_bor(0xC0, bit_rshift(cp, 6)), bit_bor(0x80, bit_band(cp, 0x3F)))
    elseif cp < 0x10000 then
        return str_char(bit_bor(0xE0, bit_rshift(cp, 12)),
                        bit_bor(0x80, bit_band(bit_rshift(cp, 6), 0x3F)),
                        bit_bor(0x80, bit_band(cp, 0x3F)))
    end
    return str_char(bit_bor(0xF0, bit_rshift(cp, 18)),
                    bit_bor(0x80, bit_band(bit_rshift(cp, 12), 0x3F)),
                    bit_bor(0x80, bit_band(bit_rshift(cp, 6), 0x3F)),
                    bit_bor(0x80, bit_band(cp, 0x3F)))
end


local function hex4(p, i, stop)
    if i + 4 > stop then
        fail("short \\u escape", i)
    end
    local v = 0
    for j = i, i + 3 do
        local c = p[j]
        local d
        if c >= 48 and c <= 57 then
            d = c - 48
        elseif c >= 97 and c <= 102 then
            d = c - 87
        elseif c >= 65 and c <= 70 then
            d = c - 55
        else
            fail("bad \\u escape", j)
        end
        v = v * 16 + d
    end
    return v
end


local ESCAPES = { [34] = '"', [92] = "\\", [47] = "/", [98] = "\b", [102] = "\f",
                  [110] = "\n", [114] = "\r", [116] = "\t" }

-- The text of a string token holding escapes.
local function unescape(p, off, len)
    local parts, m = {}, 0
    local i, stop, run = off, off + len, off
    while i < stop do
        if p[i] == 92 then
            if i > run then
                m = m + 1
                parts[m] = ffi_string(p + run, i - run)
            end
            local e = p[i + 1]
            if e == 117 then
                local cp = hex4(p, i + 2, stop)
                i = i + 6
                if cp >= 0xD800 and cp <= 0xDBFF and i + 1 < stop and p[i] == 92
                   and p[i + 1] == 117 then
                    local lo = hex4(p, i + 2, stop)
                    if lo >= 0xDC00 and lo <= 0xDFFF then
                        cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
                        i = i + 6
                    end
                end
                m = m + 1
                parts[m] = utf8(cp)
            else
                local c = ESCAPES[e]
                if not c then
                    fail("bad escape", i)
                end
                m = m + 1
                parts[m] = c
                i = i + 2
            end
            run = i
        else
            i = i + 1
        end
    end
    if stop > run then
        m = m + 1
        parts[m] = ffi_string(p + run, stop - run)
    end
    return tbl_concat(parts, "", 1, m)
end


-- The key at position k of a top-level object: the cached string when the
-- bytes match, so the common case neither hashes nor allocates.
local function top_key(p, off, len, k)
    local cached = key_cache[k]
    if cached and key_cache_len[k] == len and memcmp(p + off, cached, len) == 0 then
        return cached
    end
    local s = ffi_string(p + off, len)
    key_cache[k], key_cache_len[k] = s, len
    return s
end


local build_object, build_array

-- The value whose token is tape[k]; returns it (null for a JSON null) and
-- the index past it.
local function value_at(p, k)
    local vt = tape[k]
    local ty = vt.type
    if ty == NUMBER then
        return vt.num, k + 1
    elseif ty == STRING then
        return ffi_string(p + vt.off, vt.len), k + 1
    elseif ty == OBJECT then
        return build_object(p, k, false)
    elseif ty == ARRAY then
        return build_array(p, k)
    elseif ty == STRING_ESC then
        return unescape(p, vt.off, vt.len), k + 1
    elseif ty == NULL then
        return null, k + 1
    end
    return ty == TRUE, k + 1
end


-- The object whose token is tape[k]; returns it and the index past it.
build_object = function(p, k, top)
    local cnt = tape[k].len
    local t = new_tab(0, cnt)
    k = k + 1
    for m = 1, cnt do
        local kt = tape[k]
        local key
        if kt.type == STRING then
            if top then
                key = top_key(p, kt.off, kt.len, m)
            else
                key = ffi_string(p + kt.off, kt.len)
            end
        else
            key = unescape(p, kt.off, kt.len)
        end
        local v
        v, k = value_at(p, k + 1)
        if v ~= null then               -- null: no field
            t[key] = v
        end
    end
    return t, k
end


build_array = function(p, k)
    local cnt = tape[k].len
    local t = new_tab(cnt, 0)
    k = k + 1
    for m = 1, cnt do
        t[m], k = value_at(p, k)
    end
    return t, k
end


local function scan_failed(rc, p, len)
    local i = tonumber(where[0])
    if rc == DEEP then
        fail("nested deeper than 1000 levels", i)
    elseif i >= len then
        fail("unexpected end", i)
    end
    local c = p[i]
    if c >= 32 and c < 127 then
        fail(str_format("unexpected '%s'", str_char(c)), i)
    end
    fail(str_format("unexpected byte 0x%02x", c), i)
end


-- Tokenizes len bytes at ptr into the tape; returns them as bytes.
local function scan(ptr, len)
    local rc = C.em_json_scan(ptr, len, tape, tape_cap, where)
    while rc == FULL do
        tape_cap = tape_cap * 4
        tape = ffi_new(tape_t, tape_cap)
        rc = C.em_json_scan(ptr, len, tape, tape_cap, where)
    end
    local p = ffi_cast(bytes_t, ptr)
    if rc < 0 then
        scan_failed(rc, p, len)
    end
    return p
end


-- The value of the whole text, a top-level object aside.
local function top_value(p)
    local v = value_at(p, 0)
    if v == null then
        return nil
    end
    return v
end


-- Decodes len bytes at ptr (a pointer, or a string with its length).
-- No tail calls from here: this frame's ptr is what keeps a string's bytes
-- alive while the tables are built.
function _M.decode_bytes(ptr, len)
    local p = scan(ptr, len)
    if tape[0].type == OBJECT then
        return (build_object(p, 0, true))
    end
    return (top_value(p))
end
local decode_bytes = _M.decode_bytes


-- A decoder like decode_bytes that keeps only the named fields of a
-- top-level object (a source's fields = {...}): the other members' values
-- are stepped over on the tape, so no string or table is made for them.
-- A text that is not an object decodes whole.
function _M.projection(fields)
    local wanted, nwanted = {}, 0
    for _, f in ipairs(fields) do
        if not wanted[f] then
            wanted[f], nwanted = true, nwanted + 1
        end
    end
    -- by position, as top_key: the key, its length, whether it is kept
    local keys, lens, keep = {}, {}, {}
    local function project(p)
        local cnt = tape[0].len
        local t = new_tab(0, nwanted)
        local k = 1
        for m = 1, cnt do
            local kt = tape[k]
            local key, want
            if kt.type == STRING then
                local cached, len = keys[m], kt.len
                if cached and lens[m] == len and memcmp(p + kt.off, cached, len) == 0 then
                    key, want = cached, keep[m]
                else
                    key = ffi_string(p + kt.off, len)
                    want = wanted[key] == true
                    keys[m], lens[m], keep[m] = key, len, want
                end
            else
                key = unescape(p, kt.off, kt.len)
                want = wanted[key] == true
            end
            if want then
                local v
                v, k = value_at(p, k + 1)
                if v ~= null then
                    t[key] = v
                end
            else
                local vt = tape[k + 1]
                local ty = vt.type
                if ty == OBJECT or ty == ARRAY then
                    k = vt.skip
                else
                    k = k + 2
                end
            end
        end
        return t
    end
    return function(ptr, len)               -- no tail calls: as decode_bytes
        local p = scan(ptr, len)
        if tape[0].type == OBJECT then
            return (project(p))
        end
        return (top_value(p))
    end
end


function _M.decode(s)
    if type(s) ~= "string" then
        error("json: string expected, got " .. type(s), 2)
    end
    return decode_bytes(s, #s)
end


return _M
