-- ember.event_time: a stream's event time and the job's watermark
-- (docs/windows.md):
--
--   s:event_time("ts")                  -- a field of the element, in ms
--   s:event_time(function(x) return ms end)
--    :with_watermark("10s" [, { idle_timeout = "1m" }])
--
-- The event_time node passes every element on unchanged, after noting its
-- event time: ctx.event_ts (read by the event-time windows downstream,
-- which only narrow operations may separate from it), and the largest
-- event time minus the delay per channel: a (source, Kafka partition).
--
-- The job's watermark (one clock per job, in its keyed state as the
-- operator "event_time#clock", so it is checkpointed with the input
-- positions) moves once per batch, after the records of the batch went
-- through (advance): to the minimum over the channels that are not idle
-- of their largest event time minus the delay. A channel that brought no
-- record for idle_timeout of processing time (batch time, counted from
-- the first record after the job was loaded, or from idle_timeout after
-- the load) is idle and
-- does not hold the watermark back; when every channel is idle the
-- watermark moves with processing time (by the time since the previous
-- batch), so empty batches still close the windows of a quiet stream. The
-- watermark never goes back. Records of a batch are judged against the
-- watermark as the previous batch left it.

local state = require "ember.state"

local error = error
local type = type
local tostring = tostring
local pairs = pairs
local ipairs = ipairs
local next = next
local math_huge = math.huge
local str_format = string.format
local str_match = string.match
local str_sub = string.sub
local tonumber = tonumber
local REMOVED = state.REMOVED
local committed_of = state.committed_of


local _M = {}

_M.CLOCK = "event_time#clock"
local DEFAULT_IDLE = 60000


local callable = require "ember.callable"


function _M.declare(DStream, h)
    function DStream:event_time(how)
        h.check_self(self, "event_time")
        if type(how) ~= "string" and not callable(how) then
            error("bad argument #1 to 'event_time' (a field name or a function(x) returning "
                  .. "milliseconds expected, got " .. type(how) .. ")", 2)
        end
        local up = self
        while up.parents[1] do
            if not _M.NARROW[up.op] then
                error("'event_time' must come before any wide or stateful operation (the stream "
                      .. "from '" .. up.op .. "' at " .. up.where .. " is not a record's)", 2)
            end
            up = up.parents[1]
        end
        local node = h.new_node(self.job, "event_time", { self }, self.shape, h.where(2))
        node.ts_field = type(how) == "string" and how or nil
        node.ts_fn = type(how) ~= "string" and how or nil
        node.delay_ms = 0
        self.job.event_time = true
        return node
    end

    function DStream:with_watermark(delay, opts)
        h.check_self(self, "with_watermark")
        if self.op ~= "event_time" then
            error("'with_watermark' is a method of the stream event_time returns, not of the "
                  .. "stream from '" .. self.op .. "' at " .. self.where
                  .. " (use :event_time(...):with_watermark(\"10s\"))", 2)
        end
        local ms = delay == 0 and 0 or h.duration_ms(delay)
        if not ms then
            error("bad argument #1 to 'with_watermark' (a delay such as \"10s\" or a number of "
                  .. "seconds expected, got " .. tostring(delay) .. ")", 2)
        end
        self.delay_ms = ms
        if opts ~= nil then
            if type(opts) ~= "table" then
                error("bad argument #2 to 'with_watermark' (table expected, got "
                      .. type(opts) .. ")", 2)
            end
            for k, v in pairs(opts) do
                if k ~= "idle_timeout" then
                    error("bad option '" .. tostring(k) .. "' to 'with_watermark' (known: "
                          .. "idle_timeout)", 2)
                end
                local t = v ~= false and h.duration_ms(v)
                if v ~= false and not t then
                    error("bad option 'idle_timeout' to 'with_watermark' (a duration such as "
                          .. "\"1m\", or false, expected, got " .. tostring(v) .. ")", 2)
                end
                self.idle_ms = t or math_huge
            end
        end
        return self
    end
end


-- Operations that keep an element a record's (its event time still the
-- record's): what may stand between a source and event_time, and between
-- event_time and an event-time window. A join with a reference table is
-- one (a lookup per record, as it passes).
_M.NARROW = { map = true, filter = true, flat_map = true, map_values = true, union = true,
              event_time = true, join_table = true, left_outer_join_table = true }


-- The job's clock: registered when the job has an event_time node.
function _M.register(job, store)
    if job.event_time then
        store:add(_M.CLOCK, "event_time", job.where)
    end
end


local function visible(op, k)
    local s = op.staged[k]
    if s == nil then
        return committed_of(op, k)
    elseif s == REMOVED then
        return nil
    end
    return s
end


-- The job's watermark clock, one per compiled job (kept in ctx).
function _M.clock(ctx, store, job)
    if ctx.clock then
        return ctx.clock
    end
    local op = store.ops[_M.CLOCK]
    local idle = DEFAULT_IDLE
    for _, node in ipairs(job.nodes) do
        if node.op == "event_time" and node.idle_ms and node.idle_ms < idle then
            idle = node.idle_ms
        end
    end
    for _, node in ipairs(job.nodes) do         -- only an explicit false: never idle
        if node.op == "event_time" and node.idle_ms == math_huge then
            idle = math_huge
        end
    end
    local maxes, nmax = {}, 0                   -- channel -> max(event time - delay), this batch
    local advanced = false
    local late_batch = 0
    -- Idle time runs from the first record after a load (start, restart,
    -- reload), or once the job ran idle_timeout without one: the empty
    -- batches of a Kafka group join after a restart make no partition idle,
    -- and a stream that stays quiet after a restart still closes its windows.
    local started, since_load = false, 0
    -- The previous batch's time, in memory only: the first batch after a
    -- load moves nothing by processing time, and a quiet job's commits
    -- write nothing once its channels are idle (no fsync per empty batch).
    -- A retry runs with the same batch time, and the same previous time.
    local last_time, this_time = nil, nil
    local interval = job.interval_ms or 1000
    -- With a changelog (ember.state_changelog: op.part) every entry is a
    -- Kafka partition's, in that partition's changelog: "max:<ch>",
    -- "idle:<ch>", "late:<ch>" and "wm:<ch>", the watermark the
    -- partition's windows close by (docs/scaling.md).
    local part = op.part
    local C = { idle_ms = idle, per_partition = part ~= nil }

    function C.reset()
        if nmax > 0 then
            maxes, nmax = {}, 0
        end
        advanced = false
        late_batch = 0
    end

    function C.see(ch, t)
        local m = maxes[ch]
        if m == nil then
            nmax = nmax + 1
            maxes[ch] = t
        elseif t > m then
            maxes[ch] = t
        end
    end

    -- The watermark as the previous batch left it (-inf before any). With
    -- a changelog, of Kafka partition p's records (nil: the lowest of the
    -- partitions this driver holds).
    function C.watermark(p)
        if not part then
            return visible(op, "wm") or -math_huge
        end
        if p ~= nil then
            return visible(op, "wm:" .. (100001 + p)) or -math_huge
        end
        local lo
        for _, t in ipairs({ op.committed, op.staged }) do
            for k in pairs(t) do
                if type(k) == "string" and str_sub(k, 1, 3) == "wm:" then
                    local w = visible(op, k)
                    if w and (lo == nil or w < lo) then
                        lo = w
                    end
                end
            end
        end
        return lo or -math_huge
    end

    -- The highest of the partitions' watermarks (the job's without a
    -- changelog): no window of this driver closes beyond it.
    function C.highest()
        if not part then
            return visible(op, "wm") or -math_huge
        end
        local hi = -math_huge
        for _, t in ipairs({ op.committed, op.staged }) do
            for k in pairs(t) do
                if type(k) == "string" and str_sub(k, 1, 3) == "wm:" then
                    local w = visible(op, k)
                    if w and w > hi then
                        hi = w
                    end
                end
            end
        end
        return hi
    end

    -- n late records (of Kafka partition p, with a changelog).
    function C.late(n, p)
        late_batch = late_batch + n
        if part and p ~= nil and p >= 0 then
            local key = "late:" .. (100001 + p)
            op.staged[key] = (visible(op, key) or 0) + n
            part[key] = p
        else
            op.staged.late = (visible(op, "late") or 0) + n
        end
    end

    function C.late_in_batch()
        return late_batch
    end

    function C.late_total()
        return _M.late_total(op)
    end

    -- Moves the watermark after the batch's records; once per batch.
    -- Idle time is processing time the job ran (at most one batch
    -- interval per batch), so the time a job was down makes no channel
    -- idle: after a restart every partition holds the watermark back until
    -- it delivers or stays quiet for idle_timeout while the job runs.
    -- Returns the new watermark.
    function C.advance()
        if advanced then
            return C.watermark()
        end
        advanced = true
        local now = ctx.time or 0
        local staged = op.staged
        local fresh = now ~= this_time          -- not a retry of the same batch
        if fresh then
            last_time, this_time = this_time, now
        end
        local prev = last_time
        local step = 0
        if prev and now > prev then
            step = now - prev
            if step > interval then
                step = interval
            end
        end
        if not started then
            if fresh then
                since_load = since_load + step
            end
            if next(maxes) ~= nil or since_load >= idle then
                started = true
            else
                step = 0
            end
        end
        local chans = {}
        for k in pairs(op.committed) do
            local ch = str_match(k, "^max:(.*)$")
            if ch then
                chans[ch] = true
            end
        end
        for k in pairs(op.added or {}) do       -- new keys while a snapshot is written
            local ch = type(k) == "string" and str_match(k, "^max:(.*)$")
            if ch then
                chans[ch] = true
            end
        end
        for k in pairs(staged) do
            local ch = str_match(k, "^max:(.*)$")
            if ch then
                chans[ch] = true
            end
        end
        -- A Kafka partition assigned but not seen yet is a channel too: it
        -- holds the watermark back (as if its event time were -inf) until
        -- it delivers or stays idle for idle_timeout.
        if ctx.each_assigned then
            ctx.each_assigned(function(src, part)
                chans[tostring(src * 100000 + part + 1)] = true
            end)
        end
        for ch, m in pairs(maxes) do
            local key = "max:" .. ch
            local old = visible(op, key)
            if old == nil or m > old then
                staged[key] = m
                if part then
                    part[key] = (ch - 1) % 100000
                end
            end
            chans[tostring(ch)] = true
        end
        local lo, any, active = math_huge, false, false
        for ch in pairs(chans) do
            any = true
            local ikey = "idle:" .. ch
            local old = visible(op, ikey) or 0
            local t = 0
            if maxes[tonumber(ch)] == nil and idle ~= math_huge then
                t = old + step
                if t > idle then
                    t = idle
                end
            end
            if t ~= old then
                staged[ikey] = t
                if part then
                    part[ikey] = (tonumber(ch) - 1) % 100000
                end
            end
            if t < idle then
                active = true
                local m = visible(op, "max:" .. ch) or -math_huge
                if m < lo then
                    lo = m
                end
            end
        end
        if part then
            -- each partition's watermark: the same candidate, never back
            -- from where the partition's last owner left it
            for ch in pairs(chans) do
                local key = "wm:" .. ch
                local w = visible(op, key)
                local cand
                if active then
                    cand = lo
                elseif w then
                    cand = w + step             -- every channel idle: processing time
                end
                if cand and cand > -math_huge and (w == nil or cand > w) then
                    staged[key] = cand
                    part[key] = (tonumber(ch) - 1) % 100000
                end
            end
            return C.watermark()
        end
        local wm = visible(op, "wm")
        local cand
        if active then
            cand = lo
        elseif any and wm then
            cand = wm + step                    -- every channel idle: processing time
        end
        if cand and cand > -math_huge and (wm == nil or cand > wm) then
            staged.wm = cand
            wm = cand
        end
        return wm or -math_huge
    end

    ctx.clock = C
    return C
end


-- The per-batch object of an event_time node: passes elements on, noting
-- their event time.
function _M.make(node, ctx, out, store, job)
    local clock = _M.clock(ctx, store, job)
    local field, fn, delay = node.ts_field, node.ts_fn, node.delay_ms
    local emit = out or function() end
    local w = {}

    function w.reset()
        clock.reset()
    end

    function w.push(a, b)
        local t
        if field then
            if type(a) ~= "table" then
                error("event_time at " .. node.where .. ": the element is a " .. type(a)
                      .. ", not a table with the field '" .. field .. "'", 0)
            end
            t = a[field]
        elseif b == nil then
            t = fn(a)
        else
            t = fn(a, b)
        end
        if type(t) ~= "number" then
            local n = tonumber(t)
            if not n then
                error("event_time at " .. node.where .. ": the event time"
                      .. (field and (" (field '" .. field .. "')") or "") .. " is "
                      .. (t == nil and "nil" or ("the " .. type(t) .. " " .. tostring(t)))
                      .. ", milliseconds expected", 0)
            end
            t = n
        end
        local part = ctx.partition and ctx.partition() or -1
        clock.see((ctx.source or 0) * 100000 + part + 1, t - delay)
        ctx.event_ts = t
        emit(a, b)
    end

    function w.finish()
        clock.advance()
        return {}, {}, 0
    end

    return w
end


-- The records event-time windows found late, as the clock op has them
-- committed ("late", or "late:<ch>" per partition with a changelog).
-- committed: of the committed state only (else as the batch staged it).
function _M.late_total(op, committed)
    local n = 0
    for _, t in ipairs(committed and { op.committed } or { op.committed, op.staged }) do
        for k in pairs(t) do
            if k == "late" or (type(k) == "string" and str_sub(k, 1, 5) == "late:") then
                if committed then
                    n = n + (committed_of(op, k) or 0)
                elseif t == op.staged or op.staged[k] == nil then
                    n = n + (visible(op, k) or 0)
                end
            end
        end
    end
    return n
end


_M.show_ms = function(ms)
    if ms == -math_huge then
        return "-inf"
    end
    return str_format("%d", ms)
end


return _M
