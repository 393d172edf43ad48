-- ember.state_format: the files of keyed state (docs/state.md), one per
-- operator, partition and batch: delta-<batch id> holds the keys a batch
-- changed, snapshot-<batch id> every key after that batch.
--
-- A file is a sequence of LuaJIT string.buffer encodings: a header table
-- { format, op, kind, batch, partition, keys (about how many entries) }, then per entry the key, a flags
-- number and the value (and the batch time of the key's last record, for
-- operators with a timeout), then a trailer table { count } (no key is a
-- table, so the trailer cannot be mistaken for one). A file without its
-- trailer, or with a count that does not match, is reported damaged.
--
-- flags: 0 removed; 1 a plain value; 2 a table, the value being its
-- encoding; +4 a batch time follows.

local buffer = require "string.buffer"
local files = require "ember.state_files"

local type = type
local tostring = tostring
local tonumber = tonumber
local ipairs = ipairs
local pcall = pcall
local next = next
local error = error
local setmetatable = setmetatable
local collectgarbage = collectgarbage
local str_match = string.match
local tbl_sort = table.sort
local tbl_new = require "table.new"


local _M = {}

local FORMAT = 1
local FLUSH_AT = 1048576              -- bytes buffered before a write(2)

-- A key -> value map for state. Never one with no hash part: LuaJIT
-- records a lookup in a table without one as "always nil" behind a guard
-- on its size, and a trace recorded while the state was empty (the first
-- batch of a job) would then leave the trace on every record once it is not.
function _M.new_map()
    return tbl_new(0, 4)
end
local new_map = _M.new_map


-- The staged value of a removed key.
_M.REMOVED = setmetatable({}, { __tostring = function() return "<removed>" end })
local REMOVED = _M.REMOVED


-- A state file being written: w:entry(key, stored, time) appends an entry
-- (stored: a plain value, a box { encoded } or REMOVED; time: the batch time
-- of the key's last record, or nil); w:finish() writes the trailer and makes
-- the file durable under its name (temp, fsync, rename), returning the bytes
-- written or nil, err; w:discard() drops it. header: the header's fields
-- but format. Returns the writer, or nil, err.
local Writer = {}
Writer.__index = Writer

function _M.open(path, header, direct)
    local f, err = files.create(path, direct)
    if not f then
        return nil, err
    end
    local w = setmetatable({ f = f, buf = buffer.new(), count = 0, err = nil }, Writer)
    header.format = FORMAT
    w.buf:encode(header)
    return w
end

function Writer:flush()
    local buf = self.buf
    local p, len = buf:ref()
    local ok, err = self.f:put(p, len)
    buf:reset()
    if not ok then
        self.err = self.err or err
    end
end

function Writer:entry(k, s, t)
    local buf = self.buf
    buf:encode(k)
    if s == REMOVED then
        buf:encode(0)
    else
        if type(s) == "table" then
            buf:encode(t and 6 or 2):encode(s[1])
        else
            buf:encode(t and 5 or 1):encode(s)
        end
        if t then
            buf:encode(t)
        end
    end
    self.count = self.count + 1
    if #buf >= FLUSH_AT then
        self:flush()
    end
end

-- Bytes handed to the file so far.
function Writer:bytes()
    return self.f.bytes + #self.buf
end

function Writer:discard()
    self.f:discard()
end

-- Hands the buffered entries to the file and starts their writeback.
function Writer:writeback()
    self:flush()
    self.f:writeback()
end

function Writer:finish()
    self.buf:encode({ count = self.count })
    self:flush()
    if self.err then
        self.f:discard()
        return nil, self.err
    end
    local bytes = self.f.bytes
    local ok, err = self.f:commit()
    if not ok then
        return nil, err
    end
    return bytes
end


-- Writes a whole state file: fill(entry) calls entry(key, stored, time)
-- once per entry. Returns the bytes written, or nil, err.
function _M.write(path, header, fill, direct)
    local w, err = _M.open(path, header, direct)
    if not w then
        return nil, err
    end
    local ok, ferr = pcall(fill, function(k, s, t) w:entry(k, s, t) end)
    if not ok then
        w:discard()
        return nil, ferr
    end
    return w:finish()
end


-- Reads one state file into committed (key -> stored) and times.
-- Returns committed (a new, presized table when committed was empty and the
-- file says how many keys it holds: no rehash while a million keys load),
-- or nil, err.
local function read_into(path, committed, times)
    local s, err = files.read_file(path)
    if not s then
        return nil, err
    end
    local buf = buffer.new():set(s)
    local ok, res = pcall(function()
        local head = buf:decode()
        if type(head) ~= "table" or head.format ~= FORMAT then
            return "not an ember state file of format " .. FORMAT
        end
        local hint = tonumber(head.keys)
        if hint and hint > 4 and next(committed) == nil then
            committed = tbl_new(0, hint)
        end
        local count = 0
        while true do
            local k = buf:decode()
            if type(k) == "table" then          -- the trailer
                if k.count ~= count then
                    return "holds " .. count .. " entries, its trailer says " .. tostring(k.count)
                elseif #buf ~= 0 then
                    return "bytes after its trailer"
                end
                return nil
            end
            local flags = buf:decode()
            if flags == 0 then
                committed[k] = nil
                times[k] = nil
            else
                local v = buf:decode()
                if flags % 4 == 2 then
                    v = { v }
                end
                committed[k] = v
                if flags >= 4 then
                    times[k] = buf:decode()
                end
            end
            count = count + 1
            -- buffer:decode interns a string per key from C and never steps
            -- the collector; a cycle left in its string sweep would then
            -- stay there for the whole load, and LuaJIT does not grow its
            -- string table during that sweep (lj_str_resize): a million keys
            -- in chains of a thousand, a restore of 20-40 s instead of one.
            if count % 16384 == 0 then
                collectgarbage("step", 0)
            end
        end
    end)
    if not ok then
        return nil, "state file " .. path .. " is damaged (" .. tostring(res) .. ")"
    elseif res then
        return nil, "state file " .. path .. " is damaged (" .. res .. ")"
    end
    return committed
end


-- The state files of an operator's partition folder: { id =, kind =
-- "delta"|"snapshot", name = } sorted by id; stray temp files are removed.
function _M.list(dir)
    local names, err = files.list(dir)
    if not names then
        return nil, err
    end
    local list = {}
    for _, name in ipairs(names) do
        local kind, id = str_match(name, "^(%a+)%-(%d+)$")
        if kind == "delta" or kind == "snapshot" then
            list[#list + 1] = { id = tonumber(id), kind = kind, name = name }
        elseif str_match(name, "^%.tmp%-") then
            files.unlink(dir .. "/" .. name)
        end
    end
    tbl_sort(list, function(a, b)
        if a.id ~= b.id then return a.id < b.id end
        return a.kind < b.kind                  -- delta before snapshot
    end)
    return list
end


-- The state of one partition folder as of batch committed_id: the newest
-- snapshot <= committed_id plus the deltas after it, in order. With
-- cleanup, removes files after committed_id (prepared, never committed)
-- and files the snapshot covers. Returns committed (key -> stored), times
-- (key -> batch time), the number of deltas read; or nil, err.
function _M.load_dir(dir, committed_id, cleanup)
    local list, err = _M.list(dir)
    if not list then
        return nil, err
    end
    local base = 0
    for _, f in ipairs(list) do
        if f.kind == "snapshot" and f.id <= committed_id then
            base = f.id
        end
    end
    local committed, times, ndeltas = new_map(), new_map(), 0
    for _, f in ipairs(list) do
        local path = dir .. "/" .. f.name
        if f.id > committed_id or f.id < base or (f.id == base and f.kind == "delta") then
            if cleanup then
                files.unlink(path)
            end
        else
            local c, rerr = read_into(path, committed, times)
            if not c then
                return nil, rerr
            end
            committed = c
            if f.kind == "delta" then
                ndeltas = ndeltas + 1
            end
        end
    end
    return committed, times, ndeltas
end


return _M
