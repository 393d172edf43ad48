-- ember.sinks: what the output operations do with a batch, once the
-- executor has collected the elements each of them receives.
--
-- A collection is (ka, vb, n, shape): ka[i] the element or key, vb[i] the
-- value of a pair (see ember.dstream for shapes). The executor owns the
-- loops and the error policy; these functions may raise, the executor
-- catches it.

local type = type
local tostring = tostring
local pairs = pairs
local getmetatable = getmetatable
local error = error
local pcall = pcall
local require = require
local io_open = io.open
local io_write = io.write
local io_flush = io.flush
local os_rename = os.rename
local os_remove = os.remove
local os_execute = os.execute
local math_floor = math.floor
local str_format = string.format
local str_gsub = string.gsub
local str_match = string.match
local str_sub = string.sub
local tbl_concat = table.concat
local tbl_sort = table.sort
local tbl_clear = require "table.clear"


local _M = {}

-- Connections per endpoint in a sink pool (core/pool.h): the runtime's
-- connector.pool.size, which ember.runtime sets from the host of this Lua
-- state (each job version has its own) before the job's code runs.
_M.pool_size = 4

local DASHES = "-------------------------------------------"


local render

local function render_key(k)
    if type(k) == "string" and str_match(k, "^[%a_][%w_]*$") then
        return k
    end
    return "[" .. render(k, 1) .. "]"
end

-- Text of one value: numbers that are integers without an exponent,
-- tables as {a, b} or {k = v} (keys sorted, three levels deep), the rest
-- through tostring (which honours __tostring).
function render(v, depth)
    local t = type(v)
    if t == "string" then
        return v
    elseif t == "number" then
        if v == math_floor(v) and v > -2^53 and v < 2^53 then
            return str_format("%d", v)
        end
        return tostring(v)
    elseif t == "table" then
        local mt = getmetatable(v)
        if mt and mt.__tostring then
            return tostring(v)
        end
        depth = (depth or 0) + 1
        if depth > 3 then
            return "{...}"
        end
        local parts, n = {}, #v
        for i = 1, n do
            parts[i] = render(v[i], depth)
        end
        local keys = {}
        for k in pairs(v) do
            if type(k) ~= "number" or k < 1 or k > n or k ~= math_floor(k) then
                keys[#keys + 1] = k
            end
        end
        if #keys > 0 then
            tbl_sort(keys, function(a, b)
                local ta, tb = type(a), type(b)
                if ta ~= tb then return ta < tb end
                if ta == "number" or ta == "string" then return a < b end
                return tostring(a) < tostring(b)
            end)
            for i = 1, #keys do
                local k = keys[i]
                parts[#parts + 1] = render_key(k) .. " = " .. render(v[k], depth)
            end
        end
        return "{" .. tbl_concat(parts, ", ") .. "}"
    end
    return tostring(v)
end
_M.render = render


local function is_pair(shape, b)
    return shape == "pair" or (shape == "any" and b ~= nil)
end


-- One element as print shows it: "x" or "(k, v)".
function _M.describe(a, b, shape)
    if is_pair(shape, b) then
        return "(" .. render(a) .. ", " .. render(b) .. ")"
    end
    return render(a)
end
local describe = _M.describe


-- The array foreach_batch and transform receive: elements as they are, a
-- pair as {k, v}. For single values the collection array itself is used
-- (the executor gives every output a fresh one per batch).
function _M.materialize(shape, ka, vb, n)
    if shape == "one" then
        return ka
    end
    local out = {}
    for i = 1, n do
        local b = vb[i]
        if shape == "pair" or b ~= nil then
            out[i] = { ka[i], b }
        else
            out[i] = ka[i]
        end
    end
    return out
end


-- print(n): Spark's layout, written with one io.write and flushed, so
-- that the outputs of jobs sharing stdout do not interleave mid-batch.
function _M.print(node, ka, vb, n, info)
    local shape, limit = node.shape, node.n
    if n == 0 and node.print_empty == false then
        return
    end
    local buf = { DASHES, "\n", "Time: ", str_format("%d", info.time), " ms (",
                  info.job, ")\n", DASHES, "\n" }
    local m = #buf
    for i = 1, (n < limit and n or limit) do
        buf[m + 1] = describe(ka[i], vb[i], shape)
        buf[m + 2] = "\n"
        m = m + 2
    end
    if n > limit then
        buf[m + 1] = "...\n"
        m = m + 1
    end
    buf[m + 1] = "\n"
    io_write(tbl_concat(buf))
    io_flush()
end


local function shell_quote(s)
    return "'" .. str_gsub(s, "'", "'\\''") .. "'"
end


-- Creates dir and its parents; returns true or nil, err.
function _M.mkdir_p(dir)
    if dir == "" or dir == "." or dir == "/" then
        return true
    end
    local ok, stat = pcall(require, "posix.sys.stat")
    if ok then
        local path = str_sub(dir, 1, 1) == "/" and "" or "."
        for part in dir:gmatch("[^/]+") do
            path = path .. "/" .. part
            local done, err = stat.mkdir(path, 493)       -- 0755
            if not done and not stat.stat(path) then
                return nil, err
            end
        end
        return true
    end
    local res = os_execute("mkdir -p " .. shell_quote(dir))
    if res == 0 or res == true then
        return true
    end
    return nil, "cannot create directory " .. dir
end


local function dirname(path)
    return str_match(path, "^(.*)/[^/]*$")
end


-- save_as_text_files(prefix, suffix): <prefix>-<time_ms>[.<suffix>], one
-- element per line, a pair as key<TAB>value. Empty batches write nothing.
--
-- The file is written chunk by chunk as the executor hands elements over
-- (chunk..., finish): each chunk's lines go out in one write(2) to
-- <name>.tmp (a chunk of 8192 lines is a large write already), renamed to <name> once the batch is complete, so a
-- reader never sees half a batch and the output holds one chunk, not one
-- batch. The functions raise on failure (the executor applies the job's
-- error policy); abort() removes what a failed batch left.
function _M.text_files(node)
    local shape = node.shape
    local f, tmp, name
    local lines = {}
    local w = {}

    local function fail(err)
        w.abort()
        error("save_as_text_files: " .. tostring(err), 0)
    end

    function w.chunk(ka, vb, n, info)
        if not f then
            if not node.dir_made then
                local dir = dirname(node.prefix)
                if dir then
                    local ok, err = _M.mkdir_p(dir)
                    if not ok then
                        fail(err)
                    end
                end
                node.dir_made = true
            end
            name = node.prefix .. "-" .. str_format("%d", info.time)
            if node.suffix then
                name = name .. "." .. node.suffix
            end
            tmp = name .. ".tmp"
            local err
            f, err = io_open(tmp, "wb")
            if not f then
                fail(err)
            end
            f:setvbuf("no")     -- each chunk is one write(2) of its own
        end
        for i = 1, n do
            local a, b = ka[i], vb[i]
            if is_pair(shape, b) then
                lines[i] = render(a) .. "\t" .. render(b)
            else
                lines[i] = type(a) == "string" and a or render(a)
            end
        end
        lines[n + 1] = ""
        local ok, err = f:write(tbl_concat(lines, "\n", 1, n + 1))
        tbl_clear(lines)
        if not ok then
            fail(err)
        end
    end

    -- Ends the batch: flush, close, rename. Returns the file's name, or
    -- nil when the batch wrote nothing.
    function w.finish()
        if not f then
            return nil
        end
        local ok, err = f:flush()
        f:close()
        f = nil
        if ok then
            ok, err = os_rename(tmp, name)
        end
        if not ok then
            os_remove(tmp)
            error("save_as_text_files: " .. tostring(err), 0)
        end
        return name
    end

    function w.abort()
        if f then
            f:close()
            f = nil
            os_remove(tmp)
        end
        tbl_clear(lines)
    end
    return w
end


function _M.foreach_batch(node, ka, vb, n, info)
    node.fn(_M.materialize(node.shape, ka, vb, n), info)
end


return _M
