-- ember.bytes: a record's value seen in place, without making a string of
-- it (a source's format = "bytes", docs/lua-api.md).
--
-- Making a Lua string of every record costs an interning (hash, string
-- table, often a cache miss), an allocation and later a sweep; a job that
-- only looks at a few bytes of each record (finds a field, reads a number,
-- cuts a key) pays that for nothing. A view is a small immutable cdata
-- { _addr, _len, _gen } pointing into the block that holds the record; it
-- is made in the source loop and, when it does not escape the compiled
-- trace, never allocated at all (LuaJIT sinks it). Its fields are private:
-- the address is a number, not a pointer, so no field access reads the
-- block behind the checks below.
--
-- Safety: the block a view points into is freed once its batch is done, so
-- a view may only be read while its batch runs. Every batch takes a new
-- generation (begin) and ends it (finish); a view remembers the generation
-- it was made in, and every method checks it first: a view kept past its
-- batch (in an upvalue, a table) raises "used after its batch" instead of
-- reading freed memory. The executor turns views into strings where they
-- reach anything that may keep them (wide operations, state, joins,
-- outputs), so only the job's own narrow functions see views.
--
-- Methods follow the string library (1-based, negative indices from the
-- end): #v, v:len(), v:sub(i, j), v:byte(i [, j]), v:find(s, init, plain),
-- v:tonumber(i, j), tostring(v), v == "text", v .. "text", and v:view(i, j)
-- (the bytes i..j, as a view). Any other string
-- method (match, gmatch, gsub, lower, ...) works on a string made of the
-- view first.

local ffi = require "ffi"

local ffi_string = ffi.string
local ffi_cast = ffi.cast
local ffi_istype = ffi.istype
local C = ffi.C
local error = error
local type = type
local tostring = tostring
local tonumber = tonumber
local str_find = string.find
local str_byte = string.byte
local bit = require "bit"
local buffer = require "string.buffer"


-- A second load in the same state (package.loaded cleared) gets the first
-- one: ffi.metatype holds once per type, and its methods check the first
-- load's generation.
local registry = debug.getregistry()
if registry["ember.bytes"] then
    return registry["ember.bytes"]
end

local _M = {}

if not pcall(ffi.typeof, "ember_bytes") then
    ffi.cdef [[
        typedef struct ember_bytes {
            uintptr_t _addr;
            uint32_t _len;
            uint32_t _gen;
        } ember_bytes;
    ]]
end
pcall(ffi.cdef, "void *memmem(const void *h, size_t hn, const void *n, size_t nn);")
pcall(ffi.cdef, "int memcmp(const void *a, const void *b, size_t n);")

local bytes_t = ffi.typeof("ember_bytes")
local u8p = ffi.typeof("const uint8_t *")
local uintptr_t = ffi.typeof("uintptr_t")

-- The generation of the batch running now; views of any other are stale.
local epoch = { gen = 1 }


-- Starts a batch's generation: views made from here on are valid until
-- finish.
function _M.begin()
    epoch.gen = (epoch.gen + 1) % 4294967296
end


-- Ends it: every view made since begin is stale from now on.
function _M.finish()
    epoch.gen = (epoch.gen + 1) % 4294967296
end


local function stale()
    error("a bytes view (format = \"bytes\") used after its batch: its record's block is "
          .. "gone; keep tostring(v) instead of the view", 4)
end


-- The view's bytes, once its batch is known to be running.
local function bytes_of(v)
    if v._gen ~= epoch.gen then
        stale()
    end
    return ffi_cast(u8p, v._addr)
end


-- Lua's rule for string.sub's start: negative from the end, then clamped.
local function start_of(i, len)
    if i == nil then
        return 1
    elseif i < 0 then
        i = len + i + 1
        return i < 1 and 1 or i
    end
    return i == 0 and 1 or i
end


local function stop_of(j, len)
    if j == nil then
        return len
    elseif j < 0 then
        return len + j + 1
    end
    return j > len and len or j
end


local methods = {}

function methods.len(v)
    bytes_of(v)
    return v._len
end


-- v:sub(i, j): the bytes i..j as a string, as string.sub.
function methods.sub(v, i, j)
    local p, len = bytes_of(v), v._len
    i, j = start_of(i, len), stop_of(j, len)
    if i > j then
        return ""
    end
    return ffi_string(p + (i - 1), j - i + 1)
end


-- v:view(i, j): the bytes i..j as a view (of the same batch), for what
-- only reads them or concatenates them: v:view(1, -2) .. "x" makes one
-- string where v:sub(1, -2) .. "x" makes two.
function methods.view(v, i, j)
    local len = v._len
    bytes_of(v)
    i, j = start_of(i, len), stop_of(j, len)
    if i > j then
        i, j = 1, 0
    end
    return bytes_t(v._addr + (i - 1), j - i + 1, v._gen)
end


-- v:byte(i [, j]): as string.byte.
function methods.byte(v, i, j)
    local p, len = bytes_of(v), v._len
    if j == nil then
        if i == nil then
            i = 1
        elseif i < 0 then
            i = len + i + 1
        end
        if i < 1 or i > len then
            return
        end
        return p[i - 1]
    end
    return str_byte(ffi_string(p, len), i, j)
end


-- Does s hold any of Lua's pattern characters? Without them a pattern is
-- found the same way as plain text. string.find with a pattern is not
-- compiled, so the answer is kept per needle (up to 512, then the cache
-- starts again: a job making needles per record would grow it without end).
local specials, nspecials = {}, 0
local function has_specials(s)
    local h = specials[s]
    if h == nil then
        h = str_find(s, "[%^%$%*%+%?%.%(%)%[%]%%%-]") ~= nil
        if nspecials >= 512 then
            specials, nspecials = {}, 0
        end
        specials[s], nspecials = h, nspecials + 1
    end
    return h
end


-- v:find(s, init, plain): the first s at or after init, as string.find.
-- Text is searched in place (memmem); a pattern (plain not set and s has
-- magic characters) is matched on a string of the view.
function methods.find(v, s, init, plain)
    local p, len = bytes_of(v), v._len
    if type(s) ~= "string" then
        if not ffi_istype(bytes_t, s) then
            error("bad argument #1 to 'find' (string expected, got " .. type(s) .. ")", 2)
        end
        s = tostring(s)
    end
    if not plain and has_specials(s) then
        return str_find(ffi_string(p, len), s, init)
    end
    init = start_of(init, len)
    if init > len + 1 then                  -- as Lua 5.1: past the end is the end
        init = len + 1
    end
    local n = #s
    if n == 0 then
        return init, init - 1
    end
    local hit = C.memmem(p + (init - 1), len - init + 1, s, n)
    if hit == nil then
        return nil
    end
    local at = ffi_cast(u8p, hit) - p + 1
    return at, at + n - 1
end


-- Exact powers of ten (as doubles, up to 1e22).
local POW10 = {}
do
    local x = 1
    for k = 0, 22 do
        POW10[k] = x
        x = x * 10
    end
end


-- decimal(p, k, n): the plain decimal of the n (1 to 16) bytes at p[k] -
-- digits with at most one '.', 1 to 15 digits - or nil when they are not
-- one. One block per byte, all arithmetic, no branch: a loop here would
-- become a trace of its own and cut the record loop around it, and the
-- view in hand would then be allocated for every record instead of sunk.
-- A byte past n reads the last byte again (min) and counts for nothing
-- (inr = 0). The digits fit a double exactly, and one division by an exact
-- power of ten rounds as the string conversion does: the same number, bit
-- for bit, as tonumber on the string.
local decimal
do
    local src = { [[
local band, bor, rshift, min, POW10 = ...
return function(p, k, n)
    local last = n - 1
    local m, ndig, nfrac, ndot, seen = 0, 0, 0, 0, 0
    local c, d, dig, dot, inr
]] }
    for t = 0, 15 do
        src[#src + 1] = ([[
    c = p[k + min(T, last)]
    inr = rshift(T - n, 31)
    d = c - 48
    dig = band(inr, 1 - rshift(bor(d, 9 - d), 31))
    dot = band(inr, 1 - rshift(bor(c - 46, 46 - c), 31))
    m = m * (1 + 9 * dig) + d * dig
    seen = bor(seen, dot)
    nfrac = nfrac + band(dig, seen)
    ndig = ndig + dig
    ndot = ndot + dot
]]):gsub("T", tostring(t))
    end
    src[#src + 1] = [[
    if ndig + ndot ~= n or ndot > 1 or ndig == 0 or ndig > 15 then
        return nil
    end
    return m / POW10[nfrac]
end
]]
    decimal = assert(loadstring(table.concat(src), "=ember.bytes.decimal"))(
        bit.band, bit.bor, bit.rshift, math.min, POW10)
end


-- v:tonumber(i, j): tonumber(v:sub(i, j)) without the string. A plain
-- decimal ("-12.5", "1633", ".5") is read here (decimal above); anything
-- else (exponents, hex, spaces, more digits) goes through tonumber on the
-- string.
function methods.tonumber(v, i, j)
    local p, len = bytes_of(v), v._len
    i, j = start_of(i, len), stop_of(j, len)
    local n = j - i + 1
    if n < 1 then
        return nil
    end
    local k = i - 1
    local neg = p[k] == 45                  -- '-'
    if neg then
        k, n = k + 1, n - 1
    end
    if n >= 1 and n <= 16 then
        local x = decimal(p, k, n)
        if x then
            return neg and -x or x
        end
    end
    return tonumber(ffi_string(p + (i - 1), j - i + 1))
end


-- The buffer __concat builds in, and what it takes: views, strings and
-- numbers, as Lua's .. does.
local cat = buffer.new()
local function put(x)
    if type(x) == "cdata" and ffi_istype(bytes_t, x) then
        cat:putcdata(bytes_of(x), x._len)
    elseif type(x) == "string" or type(x) == "number" then
        cat:put(x)
    else
        error("attempt to concatenate a " .. type(x) .. " value", 3)
    end
end


local meta = {
    __index = methods,
    __len = methods.len,
    __tostring = function(v)
        return ffi_string(bytes_of(v), v._len)
    end,
    -- v .. x, x .. v: built in one buffer, so a view costs no string of
    -- its own on the way.
    __concat = function(a, b)
        cat:reset()
        put(a)
        put(b)
        local s = cat:tostring()
        if #s > 65536 then                      -- keep no giant buffer
            cat:free()
        end
        return s
    end,
    -- v == "text" (and v == w): the same bytes. x ~= nil is true of any
    -- view, even a stale one.
    __eq = function(a, b)
        if type(a) == "nil" or type(b) == "nil" then
            return false
        end
        if ffi_istype(bytes_t, b) then
            a, b = b, a
        end
        local p, n = bytes_of(a), a._len
        if type(b) == "string" then
            return #b == n and C.memcmp(p, b, n) == 0
        elseif ffi_istype(bytes_t, b) then
            return b._len == n and C.memcmp(p, bytes_of(b), n) == 0
        end
        return false
    end,
}

-- Every other string method, on a string of the view.
for name, fn in pairs(string) do
    if methods[name] == nil then
        methods[name] = function(v, ...)
            return fn(ffi_string(bytes_of(v), v._len), ...)
        end
    end
end

ffi.metatype(bytes_t, meta)


-- A view of len bytes at p (a char pointer into a block), valid for the
-- batch running now.
function _M.view(p, len)
    return bytes_t(ffi_cast(uintptr_t, p), len, epoch.gen)
end


-- x as a string when it is a view, else x: what crosses into anything that
-- may keep an element.
function _M.settle(x)
    if type(x) == "cdata" and ffi_istype(bytes_t, x) then
        return tostring(x)
    end
    return x
end


registry["ember.bytes"] = _M
return _M
