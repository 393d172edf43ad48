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
--   begin -> (run) -> prepare(id) -> [C checkpoint] -> apply(id) -> [acks]
--                  \-> abort()                                      -> maintain()
-- prepare writes the staged changes as files nobody reads yet (a delta per
-- operator that changed); apply makes them visible in memory and, every
-- snapshot_interval deltas, starts a snapshot; maintain, outside the
-- commit, writes the next slice of a snapshot and drops the files a
-- finished one made obsolete; restore rebuilds committed state from the
-- files up to the committed batch id.
--
-- On disk, under host.state_dir (<checkpoint.dir>/<job>/state):
--   CURRENT                   { dir = "v1", version = 1 } of the live state
--   v1/<op>/p0/snapshot-<id>  all keys of the operator after batch id
--   v1/<op>/p0/delta-<id>     the keys batch id changed
--   archive-<unix time>/...   state set aside (dropped operators, old versions)

local buffer = require "string.buffer"
local files = require "ember.state_files"
local format = require "ember.state_format"

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
local tbl_clear = require "table.clear"
local snapshot = require "ember.state_snapshot"
local encode = buffer.encode
local decode = buffer.decode


local _M = {}
local Store = {}
Store.__index = Store

local REMOVED = format.REMOVED
local new_map = format.new_map
_M.REMOVED = REMOVED

local MAX_DEPTH = 64
local DEFAULT_INTERVAL = 10           -- state.snapshotInterval
local DEFAULT_MAX = 268435456         -- state.max, when the host gives none


-- "64m", "512k", "1g", "100b" or a number of bytes -> bytes, or nil;
-- 0 (or "0") -> math.huge: no cap.
function _M.parse_size(v)
    if v == 0 or v == "0" then
        return math.huge
    end
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


-- The committed value of key k. While a snapshot is being written (see
-- "Snapshots" below) keys new to the operator wait in op.added, because the
-- snapshot walks op.committed with next() and a table must not get new
-- keys while it is walked.
local function committed_of(op, k)
    local v = op.committed[k]
    if v == nil then
        local added = op.added
        if added then
            v = added[k]
        end
    end
    return v
end
_M.committed_of = committed_of


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
    local max = _M.parse_size(job.state_max)
    if max == nil then
        max = _M.parse_size(host.state_max) or DEFAULT_MAX
    end
    return setmetatable({
        job = job.name,
        log = host.log,                 -- log(level, job, message), or nil
        version = job.state_version,
        migrate = job.migrate,
        dir = dir,
        max = max,
        interval = tonumber(host.snapshot_interval) or DEFAULT_INTERVAL,
        -- keys per slice of a snapshot at least (specs make it small, to
        -- spread a snapshot of a few keys over several commits)
        min_slice = tonumber(host.snapshot_min_slice) or 4096,
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
        committed = new_map(), staged = new_map(),
        nkeys = 0, bytes = 0, sbytes = 0,
        ndeltas = 0,
        times = timeout and new_map() or nil,   -- key -> batch time it last got a record
        stimes = timeout and new_map() or nil,  -- the same, staged
        buckets = timeout and new_map() or nil, -- time -> { key = true }
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


local settle                    -- below, with apply


-- Starts a batch: what an earlier run staged and nobody applied is dropped.
function Store:begin(batch_id)
    settle(self)                        -- a batch applied, not yet merged
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
        local staged = op.staged
        local d = 0
        for k, s in pairs(staged) do
            local old = committed_of(op, k)
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
    local staged, committed, stimes, times = op.staged, op.committed, op.stimes, op.times
    local path = dir .. "/" .. kind .. "-" .. str_format("%d", id)
    local header = { op = op.name, kind = kind, batch = id, partition = 0,
                     keys = kind == "snapshot" and op.nkeys or nil }
    return format.write(path, header,
                        function(entry)
        if kind == "delta" then
            for k, s in pairs(staged) do
                if s ~= REMOVED or committed_of(op, k) ~= nil then
                    entry(k, s, stimes and (stimes[k] or times[k]))
                end
            end
            if stimes then
                for k, t in pairs(stimes) do      -- touched, value unchanged
                    local c = staged[k] == nil and committed_of(op, k)
                    if c then
                        entry(k, c, t)
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
    end, kind == "delta")
end


local start_snapshot = snapshot.start
local step_snapshot = snapshot.step
local cancel_snapshot = snapshot.cancel
_M.cancel_snapshot = cancel_snapshot


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
            local bytes, werr = write_op_file(self, op, "delta", batch_id)
            if not bytes then
                self:abort()
                return false, "state: " .. op.kind .. " '" .. op.name .. "': " .. tostring(werr), total
            end
            op.prepared = { kind = "delta", id = batch_id }
            total = total + bytes
        end
    end
    self.phase = "prepared"
    self.batch_id = batch_id
    return true, nil, total
end



-- Moves what the staged maps say into committed, for one operator.
local function merge(op)
    local staged, committed, added = op.staged, op.committed, op.added
    local nkeys, n = op.nkeys, 0
    for k, s in pairs(staged) do
        n = n + 1
        local old, where = committed[k], committed
        if old == nil and added then
            old, where = added[k], added        -- a new key waits in added
        end
        if s == REMOVED then
            if old ~= nil then
                where[k] = nil
                nkeys = nkeys - 1
            end
        else
            if old == nil then
                nkeys = nkeys + 1
            end
            where[k] = s
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
            if committed_of(op, k) ~= nil then
                times[k] = t
                local b = buckets[t]
                if not b then
                    b = new_map()
                    buckets[t] = b
                end
                b[k] = true
            else
                times[k] = nil
            end
        end
        for k, s in pairs(staged) do
            if s == REMOVED and times[k] and committed_of(op, k) == nil then
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
    -- table.clear keeps a table's size: after a batch far larger than the
    -- ones that follow (a backfill of a million keys), every later batch
    -- would walk (pairs, clear) and keep room for all of them. Once batches
    -- stage an eighth or less of the largest one, a small table replaces it.
    local peak = op.staged_peak or 0
    if n > peak then
        op.staged_peak = n
    elseif peak > 65536 and n * 8 < peak then
        op.staged = new_map()
        op.staged_peak = n
        return
    end
    tbl_clear(staged)
end


-- The rest of applying a batch: its changes move from staged into
-- committed and, every snapshot_interval deltas, a snapshot starts (as of
-- that batch: after its merge, so the snapshot holds the batch's keys).
-- Until then staged holds them, and every read looks there first, so
-- they are visible from apply on. Returns nil or an error.
function settle(self)
    if self.phase ~= "applied" then
        return nil
    end
    local err
    for _, op in ipairs(self.order) do
        merge(op)
        if not op.snap and op.ndeltas >= self.interval and self.current then
            local ok, serr = start_snapshot(self, op, self.batch_id, op_dir(self, op))
            err = err or (not ok and serr) or nil
        end
    end
    self.phase = "idle"
    return err
end


-- Makes the prepared batch visible, once C's checkpoint holds batch_id.
-- later: the driver's commit, which leaves the merge into committed (a
-- random store per changed key into a table of all keys) to maintain,
-- after the acks; the next batch settles it first in any case.
function Store:apply(batch_id, later)
    if self.phase ~= "prepared" then
        return false, "state: apply of batch " .. tostring(batch_id) .. " without prepare ("
                      .. self.phase .. ")"
    end
    for _, op in ipairs(self.order) do
        local p = op.prepared
        op.prepared = nil
        if p then
            op.ndeltas = op.ndeltas + 1
            if op.snap then
                op.snap.deltas = op.snap.deltas + 1
            end
        end
    end
    self.phase = "applied"
    if later then
        return true
    end
    local err = settle(self)
    if err then
        return true, err                        -- state is fine, a stale file stays
    end
    return true
end


-- Writes the next slice of every snapshot being written, outside any
-- batch: the driver calls it after a batch's acks went out, so a commit
-- writes only the keys its batch changed and no ack waits for a snapshot.
-- What a slice writes is committed state (apply came before), at least as
-- new as the snapshot's batch S; the deltas after S hold every change since,
-- and restore applies them on top. A finished snapshot-S covers the older
-- files at once: the checkpoint holds a batch >= S (S started after its
-- apply). Returns ok, err, bytes written.
function Store:maintain()
    local err = settle(self)
    if self.phase ~= "idle" then
        return true, nil, 0
    end
    local total = 0
    for _, op in ipairs(self.order) do
        if op.snap then
            local bytes, serr = step_snapshot(op)
            if not bytes then
                -- The deltas still hold everything: a later snapshot will do.
                cancel_snapshot(op)
                op.ndeltas = self.interval   -- start again at the next apply
                err = err or ("state: " .. op.kind .. " '" .. op.name .. "': snapshot: "
                              .. tostring(serr))
            else
                total = total + bytes
            end
        end
        local done = op.snap_done
        if done then
            -- snapshot-S is complete: the files it covers go (files up to S
            -- but itself); the deltas after S stay.
            op.snap_done = nil
            op.ndeltas = done.deltas
            local dir = op_dir(self, op)
            for _, f in ipairs(format.list(dir) or {}) do
                if f.id < done.id or (f.id == done.id and f.kind == "delta") then
                    local ok, uerr = files.unlink(dir .. "/" .. f.name)
                    err = err or (not ok and uerr) or nil
                end
            end
            local added, committed = op.added, op.committed
            if added then
                for k, v in pairs(added) do
                    committed[k] = v
                end
                op.added = nil
            end
        end
    end
    return err == nil, err, total
end


-- Drops what the batch staged (and any file prepare wrote for it).
function Store:abort()
    if self.phase == "applied" then     -- nothing staged is uncommitted
        settle(self)
        return true
    end
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



-- restore and check_migrate (ember.state_restore).
require("ember.state_restore").extend(Store, {
    read_current = read_current, write_current = write_current,
    new_current = new_current, write_op_file = write_op_file,
    size_of = size_of, value_of = value_of, cancel_snapshot = cancel_snapshot,
    check_key = _M.check_key, stored = _M.stored,
})



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
