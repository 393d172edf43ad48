-- ember.window_ops: processing-time windows over batches, as Spark's
-- DStream windows (docs/windows.md):
--
--   s:window(length [, slide])
--   s:count_by_window(length [, slide])
--   s:reduce_by_window(f [, inv], length [, slide])
--   pairs:reduce_by_key_and_window(f [, inv], length [, slide] [, filter])
--   s:count_by_value_and_window(length [, slide])
--
-- length and slide are durations, multiples of the job's batch interval
-- (checked at load, check_intervals). A window at batch time t holds the
-- batches with times in (t - length, t]; it is emitted at the batch times
-- that are multiples of slide (batch times are aligned to the batch
-- interval), and every batch in between still updates it.
--
-- Everything a window holds lives in the job's state store (ember.state),
-- staged per batch like any keyed state, so it is checkpointed with the
-- input positions, exact after kill -9 and kept across a reload:
--
--   <name>           slot (batch time) -> what that batch brought: its
--                    elements (window) or its per-key partial reduction
--   <name>#agg       key -> the window's value       (inverse form only)
--   <name>#cnt       key -> how many slots hold key  (inverse form only)
--
-- The inverse form is incremental: a batch adds its partials to #agg and
-- takes off, with inv, the partials of the slots that leave, so its cost
-- follows the keys entering and leaving, not the window's size. A key no
-- slot holds any more (#cnt at 0) is dropped whatever its value, so the
-- state stays bounded and the inverse form gives the same windows as the
-- plain one (Spark keeps such keys until a filter drops them).
-- The plain form combines the partials of every slot at each emission.

local state = require "ember.state"
local event_time = require "ember.event_time"
local event_window = require "ember.event_window"

local error = error
local type = type
local tostring = tostring
local pairs = pairs
local ipairs = ipairs
local getmetatable = getmetatable
local next = next
local select = select
local tbl_sort = table.sort
local decode = require("string.buffer").decode
local new_map = require("ember.state_format").new_map
local REMOVED = state.REMOVED
local stored = state.stored
local check_key = state.check_key
local committed_of = state.committed_of


local _M = {}

local KINDS = {
    window = true, count_by_window = true, reduce_by_window = true,
    reduce_by_key_and_window = true, count_by_value_and_window = true,
}


-- Event time (ember.event_time, ember.event_window) is driven the same way.
local EVENT = { event_time = true, event_window = true, late_records = true }


-- Whether the job's results depend on batches falling on the batch
-- interval: a processing-time window counts its length in batches, and
-- update_state_by_key runs over every key once a batch. Such a job never
-- cuts catch-up batches (docs/internals.md, "Read-ahead").
function _M.counts_batches(job)
    for _, node in ipairs(job.nodes) do
        if KINDS[node.op] or node.op == "update_state_by_key" then
            return true
        end
    end
    return false
end


function _M.is_window(op)
    return KINDS[op] == true or EVENT[op] == true
end


local callable = require "ember.callable"


local function add(a, b) return a + b end
local function sub(a, b) return a - b end


-- Adds the window methods to DStream. h: dstream's helpers plus
-- state_ops' state_name and duration_ms.
function _M.declare(DStream, h)
    -- Reads length [, slide] [, opts] from args starting at i.
    local function durations(method, args, i, nargs)
        local len = args[i]
        local length = h.duration_ms(len)
        if not length then
            error("bad argument #" .. i .. " to '" .. method .. "' (window length: a duration "
                  .. "such as \"30s\", \"1m\" or a number of seconds expected, got "
                  .. tostring(len) .. ")", 4)
        end
        local slide, opts
        local s = args[i + 1]
        local rest = i + 1
        if s ~= nil and type(s) ~= "table" and not callable(s) then
            slide = h.duration_ms(s)
            if not slide then
                error("bad argument #" .. (i + 1) .. " to '" .. method .. "' (slide: a duration "
                      .. "such as \"10s\" or a number of seconds expected, got " .. tostring(s)
                      .. ")", 4)
            end
            rest = i + 2
        elseif s == nil and nargs > i + 1 then
            rest = i + 2                      -- slide given as nil: the batch interval
        end
        return length, slide, rest
    end

    local function new_window(self, method, shape, args, nargs, first)
        h.check_self(self, method)
        local f, inv
        local i = 1
        if first == "fn" then
            f = args[1]
            if not callable(f) then
                error("bad argument #1 to '" .. method .. "' (function expected, got "
                      .. type(f) .. ")", 3)
            end
            i = 2
            if callable(args[2]) then
                inv = args[2]
                i = 3
            end
        end
        local length, slide, rest = durations(method, args, i, nargs)
        local filter, opts
        for j = rest, nargs do
            local a = args[j]
            if callable(a) and method == "reduce_by_key_and_window" and not filter and not opts then
                filter = a
            elseif type(a) == "table" and not opts then
                opts = a
            elseif a ~= nil then
                error("bad argument #" .. j .. " to '" .. method .. "' (unexpected "
                      .. type(a) .. ")", 3)
            end
        end
        opts = opts or {}
        for k in pairs(opts) do
            if k ~= "name" then
                error("bad option '" .. tostring(k) .. "' to '" .. method .. "' (known: name)", 3)
            end
        end
        local where = h.where(3)
        local name = h.state_name(self, method, opts.name, method)
        local node = h.new_node(self.job, method, { self }, shape, where)
        node.fn, node.inv_fn, node.keep_fn = f, inv, filter
        node.length_ms, node.slide_ms, node.state_name = length, slide, name
        local used = self.job.state_names.used
        used[name] = where
        if inv or method == "count_by_window" or method == "count_by_value_and_window" then
            used[name .. "#agg"], used[name .. "#cnt"] = where, where
        end
        return node
    end

    function DStream:window(...)
        local node = new_window(self, "window", self.shape, { ... }, select("#", ...))
        return node
    end

    function DStream:count_by_window(...)
        local node = new_window(self, "count_by_window", "one", { ... }, select("#", ...))
        return node
    end

    function DStream:reduce_by_window(...)
        local node = new_window(self, "reduce_by_window", "one", { ... }, select("#", ...), "fn")
        return node
    end

    function DStream:reduce_by_key_and_window(...)
        if getmetatable(self) == DStream then
            h.need_pairs(self, "reduce_by_key_and_window")
        end
        local node = new_window(self, "reduce_by_key_and_window", "pair", { ... },
                                select("#", ...), "fn")
        return node
    end

    function DStream:count_by_value_and_window(...)
        if getmetatable(self) == DStream and self.shape == "pair" then
            error("'count_by_value_and_window' needs a stream of single values, but the "
                  .. "stream from '" .. self.op .. "' at " .. self.where .. " carries (key, "
                  .. "value) pairs; pick the value with :map(function(k, v) return v end) first", 2)
        end
        local node = new_window(self, "count_by_value_and_window", "pair", { ... }, select("#", ...))
        return node
    end

    event_time.declare(DStream, h)
    event_window.declare(DStream, h)
end


-- Whether the node keeps a running aggregate (#agg, #cnt).
local function incremental(node)
    return node.inv_fn ~= nil or node.op == "count_by_window"
           or node.op == "count_by_value_and_window"
end


local function show_ms(ms)
    if ms % 1000 == 0 then
        return (ms / 1000) .. "s"
    end
    return ms .. "ms"
end


-- Checks every window of a loaded job against its batch interval (ms);
-- raises "file:line: ..." naming the window.
function _M.check_intervals(job, interval)
    for _, node in ipairs(job.nodes) do
        if KINDS[node.op] then
            node.slide_ms = node.slide_ms or interval
            local what
            if node.length_ms % interval ~= 0 then
                what = "length " .. show_ms(node.length_ms)
            elseif node.slide_ms % interval ~= 0 then
                what = "slide " .. show_ms(node.slide_ms)
            end
            if what then
                error(node.where .. ": " .. node.op .. ": window " .. what .. " is not a "
                      .. "multiple of the batch interval (" .. show_ms(interval) .. ")", 0)
            end
        end
    end
end


function _M.register(node, store)
    if node.op == "event_time" then
        if not store.ops[event_time.CLOCK] then
            store:add(event_time.CLOCK, "event_time", node.job.where)
        end
        return
    elseif node.op == "event_window" then
        return event_window.register(node, store)
    elseif node.op == "late_records" then
        return
    end
    local name = node.state_name
    store:add(name, node.op, node.where)
    if incremental(node) then
        store:add(name .. "#agg", node.op, node.where)
        store:add(name .. "#cnt", node.op, node.where)
    end
end


-- What a key reads now: staged, else committed (nil when removed).
local function visible(op, k)
    local s = op.staged[k]
    if s == nil then
        s = committed_of(op, k)
    elseif s == REMOVED then
        return nil
    end
    return s
end


-- Every committed (key, stored value) of op: while a snapshot is written,
-- keys new to the operator wait in op.added (ember.state).
local function each_committed(op, fn)
    for k, s in pairs(op.committed) do
        fn(k, s)
    end
    local added = op.added
    if added then
        for k, s in pairs(added) do
            fn(k, s)
        end
    end
end


local function plain(s)
    if type(s) == "table" then
        return decode(s[1])
    end
    return s
end


-- The per-batch object of a window node, driven like a wide operation.
function _M.make(node, ctx, out, store)
    local kind = node.op
    if kind == "event_time" then
        return event_time.make(node, ctx, out, store, node.job)
    elseif kind == "event_window" then
        return event_window.make(node, ctx, out, store, node.job)
    elseif kind == "late_records" then
        return event_window.make_late(node, ctx, out)
    end
    local slots = store.ops[node.state_name]
    local agg, cnt
    if incremental(node) then
        agg = store.ops[node.state_name .. "#agg"]
        cnt = store.ops[node.state_name .. "#cnt"]
    end
    local length, slide = node.length_ms, node.slide_ms
    local f, inv, filter = node.fn, node.inv_fn, node.keep_fn
    if kind == "count_by_window" or kind == "count_by_value_and_window" then
        f, inv = add, sub
    end
    local keyed = kind == "reduce_by_key_and_window" or kind == "count_by_value_and_window"
    local check_pair = kind == "reduce_by_key_and_window" and node.parents[1].shape ~= "pair"
    local pshape = node.parents[1].shape
    local cache = {}                    -- slot -> { enc, decoded } of committed slots
    local w = {}

    -- this batch: elements (window) or partials (the reducing kinds)
    local ka, vb, n, partial, nkeys

    function w.reset()
        ka, vb, n = {}, {}, 0
        partial, nkeys = new_map(), 0
    end

    if kind == "window" then
        function w.push(a, b)
            n = n + 1
            ka[n] = a
            vb[n] = b
        end
    elseif kind == "count_by_window" then
        function w.push()
            local p = partial[true]
            partial[true] = p and p + 1 or 1
        end
    elseif kind == "count_by_value_and_window" then
        function w.push(a, b)
            if b ~= nil then
                error(kind .. " at " .. node.where .. ": single value expected, got a pair", 0)
            end
            local p = partial[a]
            if p == nil then
                check_key(store, slots, a)
                partial[a] = 1
            else
                partial[a] = p + 1
            end
        end
    elseif kind == "reduce_by_window" then
        function w.push(a, b)
            local x = a
            if pshape == "pair" or (pshape == "any" and b ~= nil) then
                x = { a, b }
            end
            local p = partial[true]
            if p == nil then
                partial[true] = x
            else
                partial[true] = f(p, x)
            end
        end
    else
        function w.push(a, b)
            if check_pair and b == nil then
                error(kind .. " at " .. node.where .. ": (key, value) pair expected, got the "
                      .. "single value " .. tostring(a), 0)
            end
            local p = partial[a]
            if p == nil then
                check_key(store, slots, a)
                partial[a] = b
            else
                partial[a] = f(p, b)
            end
        end
    end

    -- The committed slots, oldest first.
    local function slot_times()
        local ts = {}
        each_committed(slots, function(t)
            ts[#ts + 1] = t
        end)
        tbl_sort(ts)
        return ts
    end

    -- The decoded content of a committed slot (kept while it stays).
    local function slot_value(t)
        local s = committed_of(slots, t)
        if type(s) ~= "table" then
            return s
        end
        local c = cache[t]
        if c and c[1] == s[1] then
            return c[2]
        end
        local v = decode(s[1])
        cache[t] = { s[1], v }
        return v
    end

    -- Incremental form: folds one slot's partials into #agg (sign +1) or
    -- takes them off (sign -1).
    local function fold(p, sign)
        for k, v in pairs(p) do
            local c = visible(cnt, k) or 0
            local a = visible(agg, k)
            if a ~= nil then
                a = plain(a)
            end
            if sign > 0 then
                c = c + 1
                if a == nil then
                    a = v
                else
                    a = f(a, v)
                end
            else
                c = c - 1
                if a ~= nil then
                    a = inv(a, v)
                end
            end
            if c <= 0 or a == nil then
                agg.staged[k] = REMOVED
                cnt.staged[k] = REMOVED
            else
                cnt.staged[k] = c
                local t = type(a)
                if t == "number" or t == "string" or t == "boolean" then
                    agg.staged[k] = a
                else
                    agg.staged[k] = stored(store, agg, k, a)
                end
            end
        end
    end

    local function emit_pairs(m, rk, rv, rn)
        for k, v in pairs(m) do
            if not filter or filter(k, v) then
                rn = rn + 1
                rk[rn] = k
                rv[rn] = v
            end
        end
        return rn
    end

    function w.finish()
        local now = ctx.time or 0
        local cutoff = now - length
        local ts = slot_times()
        for t in pairs(cache) do
            if committed_of(slots, t) == nil or t <= cutoff then
                cache[t] = nil
            end
        end
        -- what this batch brings becomes slot `now`
        local has = false
        if kind == "window" then
            if n > 0 then
                slots.staged[now] = stored(store, slots, now, { a = ka, b = vb, n = n })
                has = true
            end
        elseif next(partial) ~= nil then
            slots.staged[now] = stored(store, slots, now, partial)
            has = true
        end
        if agg then
            for _, t in ipairs(ts) do
                if t <= cutoff then
                    fold(slot_value(t), -1)
                end
            end
            if has then
                fold(partial, 1)
            end
        end
        for _, t in ipairs(ts) do
            if t <= cutoff then
                slots.staged[t] = REMOVED
                cache[t] = nil
            end
        end

        local rk, rv, rn = {}, {}, 0
        if not out or now % slide ~= 0 then
            return rk, rv, 0
        end
        if kind == "window" then
            for _, t in ipairs(ts) do
                if t > cutoff and t ~= now then
                    local s = slot_value(t)
                    local a, b = s.a, s.b
                    for i = 1, s.n do
                        rn = rn + 1
                        rk[rn] = a[i]
                        rv[rn] = b[i]
                    end
                end
            end
            for i = 1, n do
                rn = rn + 1
                rk[rn] = ka[i]
                rv[rn] = vb[i]
            end
            return rk, rv, rn
        end

        local m
        if agg and keyed then
            -- the window's value per key: #agg as this batch leaves it,
            -- straight to the output
            local staged = agg.staged
            local function one(k, s)
                local v = plain(s)
                if not filter or filter(k, v) then
                    rn = rn + 1
                    rk[rn] = k
                    rv[rn] = v
                end
            end
            each_committed(agg, function(k, s)
                local x = staged[k]
                if x == nil then
                    one(k, s)
                elseif x ~= REMOVED then
                    one(k, x)
                end
            end)
            for k, x in pairs(staged) do
                if x ~= REMOVED and committed_of(agg, k) == nil then
                    one(k, x)
                end
            end
            return rk, rv, rn
        elseif agg then
            m = {}
            local v = visible(agg, true)
            if v ~= nil then
                m[true] = plain(v)
            end
        else
            m = {}
            local function combine(p)
                for k, v in pairs(p) do
                    local a = m[k]
                    if a == nil then
                        m[k] = v
                    else
                        m[k] = f(a, v)
                    end
                end
            end
            for _, t in ipairs(ts) do
                if t > cutoff and t ~= now then
                    combine(slot_value(t))
                end
            end
            combine(partial)
        end

        if keyed then
            rn = emit_pairs(m, rk, rv, rn)
            return rk, rv, rn
        end
        local v = m[true]
        if v == nil and kind == "count_by_window" then
            v = 0
        end
        if v ~= nil then
            rk[1] = v
            return rk, rv, 1
        end
        return rk, rv, 0
    end

    function w.size()
        return n + nkeys
    end

    return w
end


return _M
