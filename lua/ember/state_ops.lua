-- ember.state_ops: the operators that keep keyed state across batches,
-- with Spark's semantics (docs/state.md):
--
--   pairs:update_state_by_key(function(values, state) return new end [, { name = }])
--   pairs:map_with_state { fn = function(key, value, state) ... end,
--                          timeout = "30m", name = "sessions" }
--   mapped:state_snapshots()
--
-- The state itself lives in the job's store (ember.state): reads see what
-- this batch staged, then what earlier batches committed; writes are
-- staged, and become visible when the driver commits the batch.
--
-- declare() adds the methods to the DStream class at load time; make()
-- builds the per-batch object the executor drives like a wide operation:
-- { push = , reset = , finish = () -> ka, vb, n }.

local state = require "ember.state"
local window_ops = require "ember.window_ops"

local error = error
local type = type
local tostring = tostring
local tonumber = tonumber
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local setmetatable = setmetatable
local str_find = string.find
local str_match = string.match
local decode = require("string.buffer").decode
local tbl_clear = require "table.clear"
local new_map = require("ember.state_format").new_map
local REMOVED = state.REMOVED
local stored = state.stored
local check_key = state.check_key
local committed_of = state.committed_of
local show_key = state.show_key


local _M = {}

local STATEFUL = { update_state_by_key = true, map_with_state = true, state_snapshots = true }


function _M.is_stateful(op)
    return STATEFUL[op] == true or window_ops.is_window(op)
end


-- Duration -> ms: "500ms", "10s", "30m", "2h" or a number of seconds.
local function duration_ms(v)
    if type(v) == "number" then
        return v > 0 and v * 1000 or nil
    end
    if type(v) ~= "string" then
        return nil
    end
    local num, unit = str_match(v, "^%s*(%d+%.?%d*)%s*(%a+)%s*$")
    num = tonumber(num)
    local mul = ({ ms = 1, s = 1000, m = 60000, h = 3600000 })[unit]
    if not num or not mul or num <= 0 then
        return nil
    end
    return num * mul
end
_M.duration_ms = duration_ms


local callable = require "ember.callable"


-- The operator's name: the one given, or "<kind>#<n>" for the n-th
-- operator of that kind in the job (declaration order).
local function state_name(node, kind, name, method)
    local job = node.job
    local reg = job.state_names
    if not reg then
        reg = { used = {}, counts = {} }
        job.state_names = reg
    end
    if name == nil then
        local n = (reg.counts[kind] or 0) + 1
        reg.counts[kind] = n
        name = kind .. "#" .. n
    elseif type(name) ~= "string" or not str_find(name, "^[%w_][%w_%-%.#]*$") then
        error("bad option 'name' to '" .. method .. "' (a string of letters, digits, '_', "
              .. "'-', '.' and '#' not starting with '-' or '.' expected, got "
              .. (type(name) == "string" and ("'" .. name .. "'") or type(name)) .. ")", 3)
    end
    local prev = reg.used[name]
    if prev then
        error("bad option 'name' to '" .. method .. "' (the job already has a stateful "
              .. "operator named '" .. name .. "', at " .. prev .. ")", 3)
    end
    return name
end
_M.state_name = state_name


-- Adds the stateful methods to DStream. h: dstream's helpers.
function _M.declare(DStream, h)
    function DStream:update_state_by_key(fn, opts)
        h.check_self(self, "update_state_by_key")
        h.check_fn("update_state_by_key", fn)
        h.need_pairs(self, "update_state_by_key")
        if opts ~= nil and type(opts) ~= "table" then
            error("bad argument #2 to 'update_state_by_key' (table expected, got "
                  .. type(opts) .. ")", 2)
        end
        opts = opts or {}
        for k in pairs(opts) do
            if k ~= "name" then
                error("bad argument #2 to 'update_state_by_key' (unknown option '"
                      .. tostring(k) .. "'; known: name)", 2)
            end
        end
        local where = h.where(2)
        local name = state_name(self, "update_state_by_key", opts.name, "update_state_by_key")
        local node = h.new_node(self.job, "update_state_by_key", { self }, "pair", where)
        node.fn, node.state_name = fn, name
        self.job.state_names.used[name] = where
        return node
    end

    function DStream:map_with_state(spec)
        h.check_self(self, "map_with_state")
        if type(spec) ~= "table" then
            error("bad argument #1 to 'map_with_state' (table expected, got " .. type(spec)
                  .. "; use :map_with_state { fn = function(key, value, state) ... end })", 2)
        end
        for k in pairs(spec) do
            if k ~= "fn" and k ~= "timeout" and k ~= "name" then
                error("bad argument #1 to 'map_with_state' (unknown option '" .. tostring(k)
                      .. "'; known: fn, timeout, name)", 2)
            end
        end
        if not callable(spec.fn) then
            error("bad option 'fn' to 'map_with_state' (function expected, got "
                  .. type(spec.fn) .. ")", 2)
        end
        local timeout
        if spec.timeout ~= nil then
            timeout = duration_ms(spec.timeout)
            if not timeout then
                error("bad option 'timeout' to 'map_with_state' (a duration such as \"30s\", "
                      .. "\"30m\", \"2h\" or a number of seconds expected, got "
                      .. tostring(spec.timeout) .. ")", 2)
            end
        end
        h.need_pairs(self, "map_with_state")
        local where = h.where(2)
        local name = state_name(self, "map_with_state", spec.name, "map_with_state")
        local node = h.new_node(self.job, "map_with_state", { self }, "any", where)
        node.fn, node.state_name, node.timeout_ms = spec.fn, name, timeout
        self.job.state_names.used[name] = where
        return node
    end

    function DStream:state_snapshots()
        h.check_self(self, "state_snapshots")
        if self.op ~= "map_with_state" then
            error("'state_snapshots' is a method of the stream map_with_state returns, not of "
                  .. "the stream from '" .. self.op .. "' at " .. self.where, 2)
        end
        local node = h.new_node(self.job, "state_snapshots", { self }, "pair", h.where(2))
        node.state_name = self.state_name
        return node
    end

    window_ops.declare(DStream, setmetatable({ state_name = state_name, duration_ms = duration_ms },
                                             { __index = h }))
end


-- Every stateful node of a job joins its store, live or not: state the
-- graph does not compute is kept, not archived.
function _M.register(job, store)
    for _, node in ipairs(job.nodes) do
        if node.op == "update_state_by_key" or node.op == "map_with_state" then
            store:add(node.state_name, node.op, node.where, node.timeout_ms)
        elseif window_ops.is_window(node.op) then
            window_ops.register(node, store)
        end
    end
end


local EMPTY = setmetatable({}, {
    __newindex = function() error("the values of update_state_by_key are read-only", 2) end,
})


-- update_state_by_key: gathers each key's values during the pass; at the
-- end runs fn for every key with state and every key with new values.
-- Output: (key, state) of every key that has state after the batch.
local function make_update(node, ctx, out, store)
    local op = store.ops[node.state_name]
    local f = node.fn
    local check_pair = node.parents[1].shape ~= "pair"
    local groups, newkeys, nnew
    local w = {}

    function w.reset()
        groups, newkeys, nnew = new_map(), {}, 0
    end

    function w.push(a, b)
        if check_pair and b == nil then
            error(node.op .. " at " .. node.where .. ": (key, value) pair expected, got "
                  .. "the single value " .. tostring(a), 0)
        end
        local g = groups[a]
        if g == nil then
            check_key(store, op, a)
            nnew = nnew + 1
            newkeys[nnew] = a
            groups[a] = { b }
        else
            g[#g + 1] = b
        end
    end

    local function update(k, values, old, ka, vb, n)
        local prev = old
        if type(old) == "table" then
            prev = decode(old[1])
        end
        local new = f(values, prev)
        if new == nil then
            if old ~= nil then
                op.staged[k] = REMOVED
            end
            return n
        end
        local s = new
        local t = type(new)
        if t ~= "number" and t ~= "string" and t ~= "boolean" then
            s = stored(store, op, k, new)
            if type(old) == "table" and old[1] == s[1] then
                s = nil                         -- unchanged
            end
        elseif new == old then
            s = nil
        end
        if s ~= nil then
            op.staged[k] = s
        end
        n = n + 1
        ka[n] = k
        vb[n] = new
        return n
    end

    function w.finish()
        local ka, vb, n = {}, {}, 0
        local committed, added = op.committed, op.added
        local ok, err = pcall(function()
            for k, old in pairs(committed) do
                n = update(k, groups[k] or EMPTY, old, ka, vb, n)
            end
            if added then                       -- keys new while a snapshot is written
                for k, old in pairs(added) do
                    n = update(k, groups[k] or EMPTY, old, ka, vb, n)
                end
            end
            for i = 1, nnew do
                local k = newkeys[i]
                if committed[k] == nil and (not added or added[k] == nil) then
                    n = update(k, groups[k], nil, ka, vb, n)
                end
            end
        end)
        if not ok then
            -- The operator's update failed as a whole: its state stays as
            -- before the batch (on_error decides about the batch).
            tbl_clear(op.staged)
            error(err, 0)
        end
        if not out then
            return ka, vb, 0
        end
        return ka, vb, n
    end

    function w.size()
        return nnew
    end

    return w
end


-- map_with_state: fn runs per record as it arrives, with a state object
-- bound to the record's key; what it returns flows on at once. Keys idle
-- for the timeout get a last call at the end of the batch.
local function make_map_with_state(node, ctx, out, store)
    local op = store.ops[node.state_name]
    local f = node.fn
    local check_pair = node.parents[1].shape ~= "pair"
    local timeout = node.timeout_ms
    local emit = out or function() end
    local staged, committed, added, stimes
    local timing, now = false, 0
    -- The record in hand: its key, the stored value the key has now
    -- (staged, else committed) and, so that a record whose fn raised does
    -- not change the state, the key's staged value before the call, put
    -- back at the next call (or the end). Fields of a table, not upvalues:
    -- storing a string in an upvalue costs a GC barrier per record.
    local c = { key = false, vis = false, undo = false }
    local in_call, undo_time = false, nil

    local st = {}
    function st.get()
        local v = c.vis
        if type(v) == "table" then
            if v == REMOVED then
                return nil
            end
            return decode(v[1])
        end
        return v
    end
    function st.exists()
        return c.vis ~= nil and c.vis ~= REMOVED
    end
    function st.set(self, v)
        if timing then
            error(node.op .. " at " .. node.where .. ": state:set() on key " .. show_key(c.key)
                  .. ", which is timing out (it is removed after this call)", 2)
        end
        local t = type(v)
        if t == "number" or t == "string" or t == "boolean" then
            staged[c.key] = v
            c.vis = v
        elseif v == nil then
            error(node.op .. " at " .. node.where .. ": state:set(nil) on key " .. show_key(c.key)
                  .. "; use state:remove()", 2)
        else
            v = stored(store, op, c.key, v)
            staged[c.key] = v
            c.vis = v
        end
    end
    function st.remove()
        staged[c.key] = REMOVED
        c.vis = REMOVED
    end
    function st.is_timing_out()
        return timing
    end
    st.update = st.set                  -- Spark's name
    -- st:get() and friends: the method call passes st, which they ignore.

    local function undo()
        if c.undo == nil then
            staged[c.key] = nil
        else
            staged[c.key] = c.undo
        end
        if stimes then
            stimes[c.key] = undo_time
        end
        in_call = false
    end

    local w = {}
    function w.reset()
        staged, committed, added, stimes = op.staged, op.committed, op.added, op.stimes
        now = ctx.time or 0
        in_call, timing = false, false
        if timeout and op.needs_times then
            -- State that came without times (a migrate): its idle time
            -- starts now.
            for k in pairs(committed) do
                if op.times[k] == nil then
                    stimes[k] = now
                end
            end
            op.needs_times = false
        end
    end

    function w.push(a, b)
        if in_call then
            undo()
        end
        if check_pair and b == nil then
            error(node.op .. " at " .. node.where .. ": (key, value) pair expected, got "
                  .. "the single value " .. tostring(a), 0)
        end
        local ta = type(a)
        if ta ~= "string" and ta ~= "number" and ta ~= "boolean" then
            check_key(store, op, a)
        end
        local sv = staged[a]
        c.key, c.undo, in_call = a, sv, true
        if sv == nil then
            local cv = committed[a]
            if cv == nil and added then
                cv = added[a]
            end
            c.vis = cv
        else
            c.vis = sv
        end
        if stimes then
            undo_time = stimes[a]
            stimes[a] = now
        end
        local x, y = f(a, b, st)
        in_call = false
        if x ~= nil then
            emit(x, y)
        end
    end

    function w.finish()
        if in_call then
            undo()
        end
        local ka, vb, n = {}, {}, 0
        if not timeout then
            return ka, vb, 0
        end
        -- Keys whose last record is at least timeout old: one call each
        -- with is_timing_out() true, then removed.
        local cutoff = now - timeout
        local times, expired = op.times, op.expired
        local fails = store.fails
        for bt, bucket in pairs(op.buckets) do
            if bt <= cutoff then
                expired[#expired + 1] = bt
                for k in pairs(bucket) do
                    if stimes[k] == nil and times[k] == bt and staged[k] ~= REMOVED then
                        c.key, c.vis, timing = k, committed_of(op, k), true
                        local ok, x, y = pcall(f, k, nil, st)
                        timing = false
                        staged[k] = REMOVED
                        if not ok then
                            if store.fatal then
                                error(x, 0)
                            end
                            if fails and fails:add(x, "timing out: key " .. show_key(k)) then
                                error(x, 0)
                            end
                        elseif x ~= nil then
                            n = n + 1
                            ka[n] = x
                            vb[n] = y
                        end
                    end
                end
            end
        end
        if not out then
            return ka, vb, 0
        end
        return ka, vb, n
    end

    return w
end


-- state_snapshots: (key, state) of every key of the map_with_state it
-- hangs off, as the batch leaves them.
local function make_snapshots(node, ctx, out, store)
    local op = store.ops[node.state_name]
    local w = {}
    function w.reset() end
    function w.finish()
        local ka, vb, n = {}, {}, 0
        local staged = op.staged
        local function each(map)
            for k, s in pairs(map) do
                local x = staged[k]
                if x == nil then
                    x = s
                end
                if x ~= REMOVED then
                    n = n + 1
                    ka[n] = k
                    vb[n] = type(x) == "table" and decode(x[1]) or x
                end
            end
        end
        each(op.committed)
        if op.added then
            each(op.added)
        end
        for k, s in pairs(staged) do
            if committed_of(op, k) == nil and s ~= REMOVED then
                n = n + 1
                ka[n] = k
                vb[n] = type(s) == "table" and decode(s[1]) or s
            end
        end
        return ka, vb, n
    end
    return w
end


local MAKERS = {
    update_state_by_key = make_update,
    map_with_state = make_map_with_state,
    state_snapshots = make_snapshots,
}

-- The per-batch object of a stateful node; out: the push of its consumers.
function _M.make(node, ctx, out, store)
    if window_ops.is_window(node.op) then
        return window_ops.make(node, ctx, out, store)
    end
    return MAKERS[node.op](node, ctx, out, store)
end


return _M
