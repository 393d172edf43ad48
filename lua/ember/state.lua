-- ember.state: a job's state store. It holds the state of the job's
-- stateful operators (ember.state_ops), stages each batch's changes,
-- writes them to files, and restores, migrates or archives them
-- (docs/state.md).
--
-- Per operator, in memory:
--   committed  key -> stored value, what every batch so far left
--   staged     key -> stored value or REMOVED, the changes of the batch
--              being run; reads see staged, then committed
-- A stored value is a number, a string, a boolean, or a box { encoded }
-- holding a table encoded with string.buffer: a table is never shared with
-- the user's code, so mutating what state:get() returned cannot change
-- committed state behind the lifecycle's back.
--
-- The lifecycle the C core drives (docs/internals.md):
--   begin -> (run) -> prepare(id) -> [C checkpoint] -> apply(id)
--                  \-> abort()
-- prepare writes the staged changes as files nobody reads yet (a delta per
-- operator, or a snapshot every snapshot_interval files); apply makes them
-- visible in memory and drops files a snapshot made obsolete; restore
-- rebuilds committed state from the files up to the committed batch id.
--
-- On disk, under host.state_dir (<checkpoint.dir>/<job>/state):
--   CURRENT                   { dir = "v1", version = 1 } of the live state
--   v1/<op>/p0/snapshot-<id>  all keys of the operator after batch id
--   v1/<op>/p0/delta-<id>     the keys batch id changed
--   archive-<unix time>/...   state set aside (dropped operators, old versions)

local buffer = require "string.buffer"
local files = require "ember.state_files"

local type = type
local tostring = tostring
local tonumber = tonumber
local pairs = pairs
local ipairs = ipairs
local next = next
local pcall = pcall
local error = error
local setmetatable = setmetatable
local getmetatable = getmetatable
local os_time = os.time
local str_format = string.format
local str_match = string.match
local str_gsub = string.gsub
local tbl_sort = table.sort
local tbl_concat = table.concat
local tbl_clear = require "table.clear"
local encode = buffer.encode
local decode = buffer.decode


local _M = {}
local Store = {}
Store.__index = Store

local REMOVED = setmetatable({}, { __tostring = function() return "<removed>" end })
_M.REMOVED = REMOVED

local FORMAT = 1
local FLUSH_AT = 1048576              -- bytes buffered before a write(2)
local MAX_DEPTH = 64
local DEFAULT_INTERVAL = 10           -- state.snapshotInterval
local DEFAULT_MAX = 1073741824        -- state.max, when the host gives none


-- "64m", "512k", "1g", "100b" or a number of bytes -> bytes, or nil.
function _M.parse_size(v)
    if type(v) == "number" then
        return v > 0 and v or nil
    end
    if type(v) ~= "string" then
        return nil
    end
    local num, unit = str_match(v:lower(), "^%s*(%d+%.?%d*)%s*([kmgb]?)i?b?%s*$")
    num = tonumber(num)
    if not num or num <= 0 then
        return nil
    end
    local mul = ({ [""] = 1, b = 1, k = 1024, m = 1048576, g = 1073741824 })[unit]
    return num * mul
end


local function human(bytes)
    if bytes >= 1048576 then
        return str_format("%.1f MiB", bytes / 1048576)
    elseif bytes >= 1024 then
        return str_format("%.1f KiB", bytes / 1024)
    end
    return str_format("%d bytes", bytes)
end
_M.human = human


local function show_key(k)
    if type(k) == "string" then
        return str_format("%q", #k > 60 and (k:sub(1, 60) .. "...") or k)
    end
    return tostring(k)
end
_M.show_key = show_key


-- Checks that v holds only nil, booleans, numbers, strings and tables of
-- them. Returns nil, or the offending type and where in v it sits.
local function bad_in(v, path, depth, seen)
    local t = type(v)
    if t == "number" or t == "string" or t == "boolean" then
        return nil
    elseif t ~= "table" then
        return t, path
    end
    if depth > MAX_DEPTH or seen[v] then
        return "table nested too deep (a cycle?)", path
    end
    seen[v] = true
    if getmetatable(v) ~= nil then
        return "table with a metatable", path
    end
    for k, x in pairs(v) do
        local tk = type(k)
        if tk ~= "number" and tk ~= "string" and tk ~= "boolean" then
            return tk .. " (as a table key)", path
        end
        local bt, bp = bad_in(x, path .. "[" .. show_key(k) .. "]", depth + 1, seen)
        if bt then
            return bt, bp
        end
    end
    seen[v] = nil
    return nil
end


-- The stored form of a state value: plain values as they are, tables
-- boxed. Raises (after marking the batch fatal) on anything else.
function _M.stored(store, op, key, v)
    local t = type(v)
    if t == "number" or t == "string" or t == "boolean" then
        return v
    end
    local bt, path = bad_in(v, "", 0, {})
    if bt == nil then
        return { encode(v) }
    end
    store:fail(op.kind .. " '" .. op.name .. "' (" .. op.where .. "): the state of key "
               .. show_key(key) .. " holds a " .. bt .. (path ~= "" and (" at " .. path) or "")
               .. "; state may hold only nil, booleans, numbers, strings and tables of them")
end


-- A key must survive a file: a string, a number or a boolean.
function _M.check_key(store, op, key)
    local t = type(key)
    if t ~= "string" and t ~= "number" and t ~= "boolean" then
        store:fail(op.kind .. " '" .. op.name .. "' (" .. op.where .. "): key of type " .. t
                   .. " (" .. tostring(key) .. "); state keys may be strings, numbers or booleans")
    end
end


-- The Lua value of a stored one (a fresh table for a boxed one).
local function value_of(s)
    if type(s) == "table" then
        return decode(s[1])
    end
    return s
end
_M.value_of = value_of


-- About what a key and its value take in a snapshot file.
local function size_of(x)
    local t = type(x)
    if t == "string" then
        return #x + 2
    elseif t == "number" then
        return 9
    elseif t == "table" then
        return #x[1] + 2
    end
    return 1
end


local function sanitize(s)
    return (str_gsub(tostring(s), "[^%w_%.%-]", "_"))
end


-- A new store for a job; operators join with store:add.
-- job: { name, state_version, migrate, state_max }; host: the runtime's.
function _M.new(job, host)
    host = host or {}
    local dir = host.state_dir
    if not dir then
        dir = (host.checkpoint_dir or "checkpoint") .. "/" .. job.name .. "/state"
    end
    local max = _M.parse_size(job.state_max) or _M.parse_size(host.state_max) or DEFAULT_MAX
    return setmetatable({
        job = job.name,
        version = job.state_version,
        migrate = job.migrate,
        dir = dir,
        max = max,
        interval = tonumber(host.snapshot_interval) or DEFAULT_INTERVAL,
        ops = {},                       -- name -> op
        order = {},                     -- ops in declaration order
        current = nil,                  -- the CURRENT record once known
        phase = "idle",                 -- idle | ran | failed | prepared
        fatal = nil,
    }, Store)
end


-- Registers a stateful operator. kind: "map_with_state", ...; timeout in
-- ms or nil.
function Store:add(name, kind, where, timeout)
    local op = {
        name = name, kind = kind, where = where, timeout = timeout,
        committed = {}, staged = {},
        nkeys = 0, bytes = 0, sbytes = 0,
        ndeltas = 0,
        times = timeout and {} or nil,  -- key -> batch time it last got a record
        stimes = timeout and {} or nil, -- the same, staged
        buckets = timeout and {} or nil, -- time -> { key = true }
        expired = timeout and {} or nil, -- bucket times the run timed out
        needs_times = false,
        prepared = nil,                 -- { kind, id } of the file prepare wrote
    }
    self.ops[name] = op
    self.order[#self.order + 1] = op
    return op
end


function Store:is_stateful()
    return #self.order > 0
end


-- Marks the batch failed for good and raises msg. The executor sees
-- store.fatal and returns fatal = true whatever on_error says.
function Store:fail(msg)
    self.fatal = msg
    if self.fails then
        self.fails.fatal = msg
    end
    error(msg, 0)
end


-- Starts a batch: what an earlier run staged and nobody applied is dropped.
function Store:begin(batch_id)
    if self.phase ~= "idle" then
        self:abort()
    end
    self.batch_id = batch_id
    self.fatal = nil
    if self.fails then
        self.fails.fatal = nil
    end
end


-- Ends a run. Checks state.max on what the batch would leave; returns
-- nil or the error that makes the batch fatal.
function Store:ran(ok)
    if not ok then
        self.phase = "failed"
        return nil
    end
    self.phase = "ran"
    local total, worst = 0, nil
    for _, op in ipairs(self.order) do
        local staged, committed = op.staged, op.committed
        local d = 0
        for k, s in pairs(staged) do
            local old = committed[k]
            if old ~= nil then
                d = d - size_of(k) - size_of(old)
            end
            if s ~= REMOVED then
                d = d + size_of(k) + size_of(s)
            end
        end
        op.sbytes = d
        local b = op.bytes + d
        total = total + b
        if not worst or b > worst.b then
            worst = { op = op, b = b }
        end
    end
    if total > self.max then
        self.phase = "failed"
        local op = worst.op
        return "job '" .. self.job .. "': state of " .. human(total) .. " is over state.max ("
               .. human(self.max) .. "); " .. op.kind .. " '" .. op.name .. "' (" .. op.where
               .. ") holds " .. human(worst.b)
    end
    return nil
end


local function op_dir(self, op)
    return self.dir .. "/" .. self.current.dir .. "/" .. op.name .. "/p0"
end


-- CURRENT names the folder of the live state and its state_version.
local function read_current(self)
    local s = files.read_file(self.dir .. "/CURRENT")
    if not s then
        return nil
    end
    local ok, cur = pcall(decode, s)
    if not ok or type(cur) ~= "table" or type(cur.dir) ~= "string" then
        return nil, "state: " .. self.dir .. "/CURRENT is damaged"
    end
    return cur
end


local function write_current(self, cur)
    local ok, err = files.mkdir_p(self.dir)
    if not ok then
        return nil, err
    end
    ok, err = files.write_file(self.dir .. "/CURRENT", encode(cur))
    if not ok then
        return nil, err
    end
    self.current = cur
    return true
end


local function new_current(self, prev)
    local name = "v" .. sanitize(self.version == nil and "0" or self.version)
    if prev and prev.dir == name then
        name = name .. "-" .. os_time()
    end
    return { dir = name, version = self.version }
end


-- The live folder, made on first use (a store never restored: a spec, or
-- a job's first batch ever).
local function ensure_root(self)
    if self.current then
        return true
    end
    local cur, err = read_current(self)
    if err then
        return nil, err
    end
    if cur then
        self.current = cur
        return true
    end
    return write_current(self, new_current(self))
end


-- Writes one operator's file for batch id: the staged changes (delta) or
-- everything (snapshot). Returns bytes written.
local function write_op_file(self, op, kind, id)
    local dir = op_dir(self, op)
    local ok, err = files.mkdir_p(dir)
    if not ok then
        return nil, err
    end
    local path = dir .. "/" .. kind .. "-" .. str_format("%d", id)
    local w
    w, err = files.create(path)
    if not w then
        return nil, err
    end
    local buf = buffer.new()
    local staged, committed, stimes, times = op.staged, op.committed, op.stimes, op.times
    local count = 0

    local function flush()
        local p, len = buf:ref()
        local fok, ferr = w:put(p, len)
        buf:reset()
        if not fok then
            error(ferr, 0)
        end
    end
    local function entry(k, s, t)
        buf:encode(k)
        if s == REMOVED then
            buf:encode(0)
        elseif type(s) == "table" then
            buf:encode(t and 6 or 2):encode(s[1])
        else
            buf:encode(t and 5 or 1):encode(s)
        end
        if t and s ~= REMOVED then
            buf:encode(t)
        end
        count = count + 1
        if #buf >= FLUSH_AT then
            flush()
        end
    end

    buf:encode({ format = FORMAT, op = op.name, kind = kind, batch = id, partition = 0 })
    local wok, werr = pcall(function()
        if kind == "delta" then
            for k, s in pairs(staged) do
                if s ~= REMOVED or committed[k] ~= nil then
                    entry(k, s, stimes and (stimes[k] or times[k]))
                end
            end
            if stimes then
                for k, t in pairs(stimes) do      -- touched, value unchanged
                    if staged[k] == nil and committed[k] ~= nil then
                        entry(k, committed[k], t)
                    end
                end
            end
        else
            for k, s in pairs(committed) do
                local n = staged[k]
                if n == nil then
                    entry(k, s, stimes and (stimes[k] or times[k]))
                elseif n ~= REMOVED then
                    entry(k, n, stimes and (stimes[k] or times[k]))
                end
            end
            for k, s in pairs(staged) do
                if committed[k] == nil and s ~= REMOVED then
                    entry(k, s, stimes and stimes[k])
                end
            end
        end
        buf:encode({ count = count })          -- the trailer: no key is a table
        flush()
    end)
    if not wok then
        w:discard()
        return nil, werr
    end
    local bytes = w.bytes
    ok, err = w:commit()
    if not ok then
        return nil, err
    end
    return bytes
end


local function has_changes(op)
    return next(op.staged) ~= nil or (op.stimes ~= nil and next(op.stimes) ~= nil)
end


-- Writes every operator's staged changes under the state folder, durably
-- and not yet visible. Returns ok, err, bytes written.
function Store:prepare(batch_id)
    if self.phase ~= "ran" then
        return false, "state: prepare of batch " .. tostring(batch_id) .. " without a "
                      .. "successful run (" .. self.phase .. ")", 0
    end
    batch_id = tonumber(batch_id)
    if not batch_id or batch_id < 1 then
        return false, "state: prepare needs a batch id >= 1", 0
    end
    local total = 0
    for _, op in ipairs(self.order) do
        op.prepared = nil
        if has_changes(op) then
            local ok, err = ensure_root(self)
            if not ok then
                self:abort()
                return false, err, 0
            end
            local kind = op.ndeltas + 1 >= self.interval and "snapshot" or "delta"
            local bytes, werr = write_op_file(self, op, kind, batch_id)
            if not bytes then
                self:abort()
                return false, "state: " .. op.kind .. " '" .. op.name .. "': " .. tostring(werr), total
            end
            op.prepared = { kind = kind, id = batch_id }
            total = total + bytes
        end
    end
    self.phase = "prepared"
    self.batch_id = batch_id
    return true, nil, total
end


-- Files of an operator's folder: { id = n, kind = "delta"|"snapshot",
-- name = } sorted by id; stray temp files are removed.
local function op_files(dir)
    local names, err = files.list(dir)
    if not names then
        return nil, err
    end
    local list = {}
    for _, name in ipairs(names) do
        local kind, id = str_match(name, "^(%a+)%-(%d+)$")
        if (kind == "delta" or kind == "snapshot") then
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


-- Moves what the staged maps say into committed, for one operator.
local function merge(op)
    local staged, committed = op.staged, op.committed
    local nkeys = op.nkeys
    for k, s in pairs(staged) do
        local old = committed[k]
        if s == REMOVED then
            if old ~= nil then
                committed[k] = nil
                nkeys = nkeys - 1
            end
        else
            if old == nil then
                nkeys = nkeys + 1
            end
            committed[k] = s
        end
    end
    op.nkeys = nkeys
    op.bytes = op.bytes + op.sbytes
    op.sbytes = 0
    local stimes = op.stimes
    if stimes then
        local times, buckets = op.times, op.buckets
        for _, bt in ipairs(op.expired) do      -- what stays in them timed out
            for k in pairs(buckets[bt] or {}) do
                if stimes[k] == nil then
                    times[k] = nil
                end
            end
            buckets[bt] = nil
        end
        for k, t in pairs(stimes) do
            local old = times[k]
            if old and buckets[old] then
                buckets[old][k] = nil
            end
            if committed[k] ~= nil then
                times[k] = t
                local b = buckets[t]
                if not b then
                    b = {}
                    buckets[t] = b
                end
                b[k] = true
            else
                times[k] = nil
            end
        end
        for k, s in pairs(staged) do
            if s == REMOVED and committed[k] == nil and times[k] then
                local b = buckets[times[k]]
                if b then
                    b[k] = nil
                end
                times[k] = nil
            end
        end
        tbl_clear(stimes)
        tbl_clear(op.expired)
    end
    tbl_clear(staged)
end


-- Makes the prepared batch visible. Once C's checkpoint holds batch_id, a
-- snapshot at batch_id covers every older file of its operator.
function Store:apply(batch_id)
    if self.phase ~= "prepared" then
        return false, "state: apply of batch " .. tostring(batch_id) .. " without prepare ("
                      .. self.phase .. ")"
    end
    local err
    for _, op in ipairs(self.order) do
        merge(op)
        local p = op.prepared
        op.prepared = nil
        if p then
            if p.kind == "snapshot" then
                op.ndeltas = 0
                local dir = op_dir(self, op)
                for _, f in ipairs(op_files(dir) or {}) do
                    if f.id < p.id then
                        local ok, uerr = files.unlink(dir .. "/" .. f.name)
                        err = err or (not ok and uerr) or nil
                    end
                end
            else
                op.ndeltas = op.ndeltas + 1
            end
        end
    end
    self.phase = "idle"
    if err then
        return true, err                        -- state is fine, a stale file stays
    end
    return true
end


-- Drops what the batch staged (and any file prepare wrote for it).
function Store:abort()
    for _, op in ipairs(self.order) do
        tbl_clear(op.staged)
        if op.stimes then
            tbl_clear(op.stimes)
            tbl_clear(op.expired)
        end
        op.sbytes = 0
        local p = op.prepared
        if p and self.current then
            files.unlink(op_dir(self, op) .. "/" .. p.kind .. "-" .. str_format("%d", p.id))
        end
        op.prepared = nil
    end
    self.phase = "idle"
    return true
end


-- Reads one state file into committed/times. Returns true or nil, err.
local function load_file(path, op, committed, times)
    local s, err = files.read_file(path)
    if not s then
        return nil, err
    end
    local buf = buffer.new():set(s)
    local ok, res = pcall(function()
        local head = buf:decode()
        if type(head) ~= "table" or head.format ~= FORMAT then
            return "not an ember state file"
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
                if times then times[k] = nil end
            else
                local v = buf:decode()
                if flags % 4 == 2 then
                    v = { v }
                end
                committed[k] = v
                if flags >= 4 then
                    local t = buf:decode()
                    if times then times[k] = t end
                end
            end
            count = count + 1
        end
    end)
    if not ok then
        return nil, "state file " .. path .. " is damaged (" .. tostring(res) .. ")"
    elseif res then
        return nil, "state file " .. path .. " is damaged (" .. res .. ")"
    end
    return true
end


-- The state of one operator folder as of batch committed: the newest
-- snapshot <= committed plus the deltas after it. With cleanup, removes
-- files after committed (prepared, never committed) and files the
-- snapshot covers. Returns committed map, times map, ndeltas, or nil, err.
local function load_dir(dir, committed_id, cleanup)
    local list, err = op_files(dir)
    if not list then
        return nil, err
    end
    local base = 0
    for _, f in ipairs(list) do
        if f.kind == "snapshot" and f.id <= committed_id then
            base = f.id
        end
    end
    local committed, times, ndeltas = {}, {}, 0
    for _, f in ipairs(list) do
        local path = dir .. "/" .. f.name
        if f.id > committed_id or f.id < base or (f.id == base and f.kind == "delta") then
            if cleanup then
                files.unlink(path)
            end
        elseif f.id >= base and (f.kind == "snapshot" or f.id > base) then
            local ok, lerr = load_file(path, nil, committed, times)
            if not ok then
                return nil, lerr
            end
            if f.kind == "delta" then
                ndeltas = ndeltas + 1
            end
        end
    end
    return committed, times, ndeltas
end


-- archive-<unix time> (archive-<unix time>.<n> when that second has one),
-- as the job folder's checkpoint archives are named.
local function archive_dir(self)
    local stamp = str_format("%d", os_time())
    local name = "archive-" .. stamp
    local n = 1
    while files.exists(self.dir .. "/" .. name) do
        n = n + 1
        name = "archive-" .. stamp .. "." .. n
    end
    local ok, err = files.mkdir_p(self.dir .. "/" .. name)
    if not ok then
        return nil, err
    end
    return self.dir .. "/" .. name
end


-- Installs loaded maps into an operator.
local function install(op, committed, times, ndeltas)
    op.committed, op.nkeys, op.bytes, op.ndeltas = committed, 0, 0, ndeltas or 0
    tbl_clear(op.staged)
    local nkeys, bytes = 0, 0
    for k, s in pairs(committed) do
        nkeys = nkeys + 1
        bytes = bytes + size_of(k) + size_of(s)
    end
    op.nkeys, op.bytes = nkeys, bytes
    if op.timeout then
        local buckets, kept = {}, {}
        local missing = false
        for k in pairs(committed) do
            local t = times and times[k]
            if t then
                kept[k] = t
                local b = buckets[t]
                if not b then
                    b = {}
                    buckets[t] = b
                end
                b[k] = true
            else
                missing = true
            end
        end
        op.times, op.buckets = kept, buckets
        tbl_clear(op.stimes)
        tbl_clear(op.expired)
        op.needs_times = missing
    end
end


-- Every operator folder under the live state folder, loaded as of
-- committed_id: name -> { committed, times, ndeltas }.
local function load_all(self, cur, committed_id, cleanup)
    local root = self.dir .. "/" .. cur.dir
    local names, is_dir = files.list(root)
    if not names then
        return nil, is_dir
    end
    local out = {}
    for _, name in ipairs(names) do
        if is_dir[name] then
            local c, t, nd = load_dir(root .. "/" .. name .. "/p0", committed_id, cleanup)
            if not c then
                return nil, t
            end
            out[name] = { committed = c, times = t, ndeltas = nd }
        end
    end
    return out
end


local function plain_state(loaded)
    local old = {}
    for name, l in pairs(loaded) do
        local m = {}
        for k, s in pairs(l.committed) do
            m[k] = value_of(s)
        end
        old[name] = m
    end
    return old
end


-- Runs the job's migrate on the old state; returns name -> stored map.
local function run_migrate(self, loaded, old_version)
    local ok, new = pcall(self.migrate, plain_state(loaded), old_version)
    if not ok then
        return nil, "migrate of job '" .. self.job .. "' from state_version "
                    .. tostring(old_version) .. " to " .. tostring(self.version)
                    .. " failed: " .. tostring(new)
    end
    if type(new) ~= "table" then
        return nil, "migrate of job '" .. self.job .. "' must return a table (operator name "
                    .. "-> { key = state }), got " .. type(new)
    end
    local out = {}
    for name, m in pairs(new) do
        local op = self.ops[name]
        if not op then
            local known = {}
            for _, o in ipairs(self.order) do
                known[#known + 1] = o.name
            end
            return nil, "migrate of job '" .. self.job .. "' returned state for operator '"
                        .. tostring(name) .. "', which the job does not declare (it has: "
                        .. (#known > 0 and tbl_concat(known, ", ") or "none") .. ")"
        end
        if type(m) ~= "table" then
            return nil, "migrate of job '" .. self.job .. "': the state of '" .. name
                        .. "' must be a table of key -> state, got " .. type(m)
        end
        local stored = {}
        for k, v in pairs(m) do
            local sok, s = pcall(function()
                _M.check_key(self, op, k)
                return _M.stored(self, op, k, v)
            end)
            if not sok then
                self.fatal = nil
                if self.fails then
                    self.fails.fatal = nil
                end
                return nil, "migrate of job '" .. self.job .. "': " .. tostring(s)
            end
            stored[k] = s
        end
        out[name] = stored
    end
    return out
end


-- Writes a full snapshot of stored maps into a fresh state folder.
local function write_generation(self, cur, maps, id)
    local root = self.dir .. "/" .. cur.dir
    if files.exists(root) then
        local ok, err = files.rm_rf(root)       -- a migration that never finished
        if not ok then
            return nil, err
        end
    end
    local ok, err = files.mkdir_p(root)
    if not ok then
        return nil, err
    end
    local saved = self.current
    self.current = cur
    for name, m in pairs(maps) do
        local op = self.ops[name]
        local keep_c, keep_s, keep_st = op.committed, op.staged, op.stimes
        op.committed, op.staged, op.stimes = m, {}, nil   -- no times: set at the next batch
        local bytes, werr = write_op_file(self, op, "snapshot", id)
        op.committed, op.staged, op.stimes = keep_c, keep_s, keep_st
        if not bytes then
            self.current = saved
            return nil, werr
        end
    end
    self.current = saved
    return true
end


local function same_version(a, b)
    return a == b or (a ~= nil and b ~= nil and tostring(a) == tostring(b))
end


-- Rebuilds committed state as of committed_batch_id (0: nothing
-- committed) from the files; migrates or archives it when the state on
-- disk has another state_version. Returns true or false, err.
function Store:restore(committed_id, old_version)
    committed_id = tonumber(committed_id) or 0
    self:abort()
    local cur, err = read_current(self)
    if err then
        return false, err
    end
    if not cur then
        -- Nothing was ever written: empty state; the folder is made by the
        -- first prepare that has something to write.
        for _, op in ipairs(self.order) do
            install(op, {}, {}, 0)
        end
        self.current = nil
        return true
    end

    -- Another version folder: the old one of a migration that switched
    -- CURRENT and died before archiving it, or the new one of a migration
    -- that died before switching. Either way it is not the live state:
    -- archived (not dropped).
    local names, is_dir = files.list(self.dir)
    if not names then
        return false, is_dir
    end
    local archive
    for _, name in ipairs(names) do
        if is_dir[name] and name ~= cur.dir and not str_match(name, "^archive%-") then
            archive = archive or archive_dir(self)
            if not archive then
                return false, "state: cannot make an archive folder in " .. self.dir
            end
            local ok, rerr = files.rename(self.dir .. "/" .. name, archive .. "/" .. name)
            if not ok then
                return false, rerr
            end
        end
    end

    local loaded
    loaded, err = load_all(self, cur, committed_id, true)
    if not loaded then
        return false, err
    end

    if same_version(cur.version, self.version) then
        self.current = cur
        -- Operators the job no longer declares: set aside, not dropped.
        for name in pairs(loaded) do
            if not self.ops[name] then
                archive = archive or archive_dir(self)
                if not archive then
                    return false, "state: cannot make an archive folder in " .. self.dir
                end
                local ok, rerr = files.rename(self.dir .. "/" .. cur.dir .. "/" .. name,
                                              archive .. "/" .. name)
                if not ok then
                    return false, rerr
                end
            end
        end
        for _, op in ipairs(self.order) do
            local l = loaded[op.name]
            if l then
                install(op, l.committed, l.times, l.ndeltas)
            else
                install(op, {}, {}, 0)
            end
        end
        return true
    end

    -- Another state_version: migrate, or archive and start empty.
    local maps = {}
    local has_state = false
    for _, l in pairs(loaded) do
        if next(l.committed) ~= nil then
            has_state = true
        end
    end
    if self.migrate and has_state then
        maps, err = run_migrate(self, loaded, cur.version)
        if not maps then
            return false, err
        end
    end
    local new = new_current(self, cur)
    local ok, werr = write_generation(self, new, maps, committed_id)
    if not ok then
        return false, werr
    end
    ok, werr = write_current(self, new)
    if not ok then
        return false, werr
    end
    archive = archive or archive_dir(self)
    if archive then
        files.rename(self.dir .. "/" .. cur.dir, archive .. "/" .. cur.dir)
    end
    for _, op in ipairs(self.order) do
        install(op, maps[op.name] or {}, {}, 0)
    end
    return true
end


-- A dry run of migrate on the state on disk, touching no file: false and
-- the error when it would fail.
function Store:check_migrate(committed_id, old_version)
    committed_id = tonumber(committed_id) or 0
    local cur, err = read_current(self)
    if err then
        return false, err
    end
    if not cur or same_version(cur.version, self.version) or not self.migrate then
        return true
    end
    local loaded
    loaded, err = load_all(self, cur, committed_id, false)
    if not loaded then
        return false, err
    end
    local maps
    maps, err = run_migrate(self, loaded, cur.version)
    if not maps then
        return false, err
    end
    return true
end


-- name -> bytes of committed state (about what a snapshot file holds).
function Store:state_bytes()
    local out = {}
    for _, op in ipairs(self.order) do
        out[op.name] = op.bytes
    end
    return out
end


function Store:keys(name)
    local op = self.ops[name]
    return op and op.nkeys or 0
end


return _M
