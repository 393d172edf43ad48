-- ember.executor: runs one batch of a job through its DStream graph.
--
-- The graph is compiled once, at load, into push functions. Every element
-- travels as two arguments (a, b): a single value is (x, nil), a pair is
-- (k, v). A narrow operation (map, filter, flat_map, map_values, union) is
-- a closure with that fixed signature calling its consumers; a stream with
-- several consumers calls each in turn. A source pass is then one loop per
-- block over the FFI records, pushing each value through the fused chain:
-- no per-record table, no varargs (they stop the JIT), no pcall per record.
--
-- Wide operations (reduce_by_key, group_by_key, count, count_by_value,
-- reduce, transform) and outputs accumulate during the source pass. After
-- it, wide operations flush their results downstream in creation order,
-- which is a topological order (a node's parents always exist before it),
-- so a flush may feed a wide operation that flushes later. Outputs then run
-- in declaration order on what they collected, except sinks (to_kafka,
-- to_redis, to_rabbitmq): they write chunk by chunk as elements reach them
-- (make_streamer), so a large batch is never held whole. All state is per
-- batch.
--
-- Errors: a whole loop runs under one pcall. The loop stores the index of
-- the element in hand in `cur`; when a user function raises, the handler
-- reads it, applies the job's on_error policy to that element and resumes
-- the loop at the next index.
--
-- Streams nobody consumes (no output downstream) are not computed, as in
-- Spark: their functions never run.

local ffi = require "ffi"
local eff = require "ember.ffi"
local sinks = require "ember.sinks"
local json = require "ember.json"
local failures = require "ember.failures"

local ffi_string = ffi.string
local ffi_cast = ffi.cast
local view_ptr_t = eff.view_ptr_t
local pcall = pcall
local error = error
local type = type
local tostring = tostring
local tonumber = tonumber
local ipairs = ipairs
local decode_bytes = json.decode_bytes
local materialize = sinks.materialize
local tbl_clear = require "table.clear"
local describe = sinks.describe



-- What each connector's meta bytes are, as a field of a record table.
local META_FIELD = { kafka = "topic", rabbitmq = "exchange", redis = "id", file = "file" }

-- A source record as a table (format = "record"). Kafka's meta is the
-- topic, then "\0key=value" per header.
local function record_table(r, arena, kind)
    local t = {
        value = ffi_string(arena + r.value_off, r.value_len),
        timestamp = tonumber(r.ts_ms),
        offset = tonumber(r.offset),
    }
    if r.key_off ~= 0xFFFFFFFF then
        t.key = ffi_string(arena + r.key_off, r.key_len)
    end
    if r.partition >= 0 then
        t.partition = r.partition
    end
    if r.meta_len > 0 then
        local meta = ffi_string(arena + r.meta_off, r.meta_len)
        if kind == "kafka" then
            local topic, rest = meta:match("^([^%z]*)(.*)$")
            t.topic = topic
            for k, v in rest:gmatch("%z([^=%z]*)=([^%z]*)") do
                local headers = t.headers or {}
                headers[k] = v
                t.headers = headers
            end
        elseif kind == "redis" and not meta:find("^%d+%-%d+$") then
            t.channel = meta -- pub/sub: the channel; streams: the entry id
        else
            t[META_FIELD[kind] or "meta"] = meta
        end
    end
    return t
end

local _M = {}


local WIDE = { reduce_by_key = true, group_by_key = true, count = true,
               count_by_value = true, reduce = true, transform = true }


local function fanout(fns)
    local n = #fns
    if n == 0 then
        return nil
    elseif n == 1 then
        return fns[1]
    elseif n == 2 then
        local f1, f2 = fns[1], fns[2]
        return function(a, b)
            f1(a, b)
            f2(a, b)
        end
    end
    return function(a, b)
        for i = 1, n do
            fns[i](a, b)
        end
    end
end


local function where_of(node)
    return node.op .. " at " .. node.where
end


local function not_a_pair(node, a)
    error(where_of(node) .. ": (key, value) pair expected, got the single value "
          .. describe(a, nil, "one"), 0)
end


-- Narrow operations: the function a node's parent pushes into. Each shape
-- gets its own closure so the user function is called with exactly the
-- arguments the element has, without a per-element branch where the shape
-- is known.

local function make_map(node, out)
    local f, shape = node.fn, node.parents[1].shape
    if shape == "one" then
        return function(a, b)
            local x, y = f(a)
            if x ~= nil then
                out(x, y)
            end
        end
    elseif shape == "pair" then
        return function(a, b)
            local x, y = f(a, b)
            if x ~= nil then
                out(x, y)
            end
        end
    end
    return function(a, b)
        local x, y
        if b == nil then
            x, y = f(a)
        else
            x, y = f(a, b)
        end
        if x ~= nil then
            out(x, y)
        end
    end
end


local function make_filter(node, out)
    local f, shape = node.fn, node.parents[1].shape
    if shape == "one" then
        return function(a, b)
            if f(a) then
                out(a, nil)
            end
        end
    elseif shape == "pair" then
        return function(a, b)
            if f(a, b) then
                out(a, b)
            end
        end
    end
    return function(a, b)
        local keep
        if b == nil then
            keep = f(a)
        else
            keep = f(a, b)
        end
        if keep then
            out(a, b)
        end
    end
end


local function make_flat_map(node, out)
    local f, shape = node.fn, node.parents[1].shape
    local function emit(t)
        if t == nil then
            return
        end
        if type(t) ~= "table" then
            error(where_of(node) .. ": function must return an array (table), got "
                  .. type(t), 0)
        end
        for i = 1, #t do
            local x = t[i]
            out(x, nil)
        end
    end
    if shape == "one" then
        return function(a, b)
            emit(f(a))
        end
    elseif shape == "pair" then
        return function(a, b)
            emit(f(a, b))
        end
    end
    return function(a, b)
        if b == nil then
            emit(f(a))
        else
            emit(f(a, b))
        end
    end
end


local function make_map_values(node, out)
    local f, shape = node.fn, node.parents[1].shape
    if shape == "pair" then
        return function(a, b)
            out(a, (f(b)))
        end
    end
    return function(a, b)
        if b == nil then
            not_a_pair(node, a)
        end
        out(a, (f(b)))
    end
end


-- Wide operations: { push = accumulate, reset = new state for a batch,
-- finish = () -> ka, vb, n results to push downstream }.

local function make_by_key(node, combine)
    -- reduce_by_key and count_by_value: one slot per key, keys in the
    -- order they first appeared (deterministic output for the same input).
    local check_pair = node.op == "reduce_by_key" and node.parents[1].shape ~= "pair"
    local f = node.fn
    local idx, keys, vals, n
    local w = {}
    function w.reset()
        idx, keys, vals, n = {}, {}, {}, 0
    end
    function w.finish()
        return keys, vals, n
    end
    if combine == "count" then
        w.push = function(a, b)
            if b ~= nil then
                error(where_of(node) .. ": single value expected, got the pair "
                      .. describe(a, b, "pair"), 0)
            end
            local p = idx[a]
            if p == nil then
                n = n + 1
                idx[a] = n
                keys[n] = a
                vals[n] = 1
            else
                vals[p] = vals[p] + 1
            end
        end
    elseif check_pair then
        w.push = function(a, b)
            if b == nil then
                not_a_pair(node, a)
            end
            local p = idx[a]
            if p == nil then
                n = n + 1
                idx[a] = n
                keys[n] = a
                vals[n] = b
            else
                vals[p] = f(vals[p], b)
            end
        end
    else
        w.push = function(a, b)
            local p = idx[a]
            if p == nil then
                n = n + 1
                idx[a] = n
                keys[n] = a
                vals[n] = b
            else
                vals[p] = f(vals[p], b)
            end
        end
    end
    return w
end


local function make_group_by_key(node)
    local check_pair = node.parents[1].shape ~= "pair"
    local idx, keys, groups, n
    local w = {}
    function w.reset()
        idx, keys, groups, n = {}, {}, {}, 0
    end
    function w.finish()
        return keys, groups, n
    end
    function w.push(a, b)
        if check_pair and b == nil then
            not_a_pair(node, a)
        end
        local p = idx[a]
        if p == nil then
            n = n + 1
            idx[a] = n
            keys[n] = a
            groups[n] = { b }
        else
            local g = groups[p]
            g[#g + 1] = b
        end
    end
    return w
end


local function make_count()
    local c
    local w = {}
    function w.reset()
        c = 0
    end
    function w.finish()
        return { c }, {}, 1
    end
    function w.push(a, b)
        c = c + 1
    end
    return w
end


local function make_reduce(node)
    local f, shape = node.fn, node.parents[1].shape
    local acc, has
    local w = {}
    function w.reset()
        acc, has = nil, false
    end
    function w.finish()
        if has and acc ~= nil then
            return { acc }, {}, 1
        end
        return {}, {}, 0
    end
    function w.push(a, b)
        local x = a
        if shape == "pair" or (shape == "any" and b ~= nil) then
            x = { a, b }
        end
        if has then
            acc = f(acc, x)
        else
            acc, has = x, true
        end
    end
    return w
end


-- transform(fn(records, info)): fn runs in finish, so an error there is
-- reported by the caller as a failure of the whole batch of that stream.
local function make_transform(node, ctx)
    local f, shape = node.fn, node.parents[1].shape
    local ka, vb, n
    local w = {}
    function w.reset()
        ka, vb, n = {}, {}, 0
    end
    function w.push(a, b)
        n = n + 1
        ka[n] = a
        vb[n] = b
    end
    function w.size()
        return n
    end
    function w.finish()
        local res = f(materialize(shape, ka, vb, n),
                      { time = ctx.time, job = ctx.job, count = n })
        if res == nil then
            return {}, {}, 0
        end
        if type(res) ~= "table" then
            error(where_of(node) .. ": function must return an array (table), got "
                  .. type(res), 0)
        end
        return res, {}, #res
    end
    return w
end


-- An output's collector: the elements it receives during the passes. With
-- a limit, on_full() is called each time it holds that many (a sink's
-- streamer empties it then).
local function make_collector(node, limit, on_full)
    local keep_b = node.shape ~= "one"
    local c = {}
    local ka, vb, n = {}, {}, 0
    limit = limit or math.huge
    function c.reset()                  -- fresh arrays: an output may keep the last ones
        ka, vb, n = {}, {}, 0
    end
    function c.clear()                  -- the same arrays, emptied
        tbl_clear(ka)
        if keep_b then
            tbl_clear(vb)
        end
        n = 0
    end
    function c.get()
        return ka, vb, n
    end
    if keep_b then
        c.push = function(a, b)
            n = n + 1
            ka[n] = a
            vb[n] = b
            if n == limit then
                on_full()
            end
        end
    else
        c.push = function(a, b)
            n = n + 1
            ka[n] = a
            if n == limit then
                on_full()
            end
        end
    end
    return c
end


-- A sink's writer: the elements it receives go out in chunks of
-- SINK_CHUNK while the batch is computed, instead of being held until the
-- pass ends, so a batch of a million records never lives in memory as a
-- million tables. A record the sink cannot write (info.reject) follows
-- on_error; a failed delivery stops this sink for the batch, and the batch
-- fails once the pass is over (the driver runs it again).
local SINK_CHUNK = 8192
_M.SINK_CHUNK = SINK_CHUNK

local function make_streamer(node, ctx, fails)
    local shape, write, finish = node.shape, node.write, node.finish
    local total, failed, stop, open = 0, nil, false, false
    local c
    local info = { job = ctx.job, shape = shape }
    function info.reject(i, why)
        local ka, vb = c.get()
        local _, text = pcall(describe, ka[i], vb[i], shape)
        stop = fails:add(node.op .. ": " .. tostring(why), text) or stop
        return stop
    end

    local function flush()
        local ka, vb, n = c.get()
        if n == 0 then
            return
        end
        if not failed and not stop then
            open = true
            info.time, info.count, info.first = ctx.time, n, total + 1
            local ok, done, err = pcall(write, materialize(shape, ka, vb, n), info)
            if not stop and (not ok or not done) then
                failed = tostring(ok and err or done)
            end
        end
        total = total + n
        c.clear()
    end
    c = make_collector(node, SINK_CHUNK, flush)

    local s = { push = c.push }
    -- The sink's end of the batch (its delivery reports, confirms), once.
    function s.close()
        if open and finish then
            local ok, done, err = pcall(finish, info)
            if not failed and (not ok or not done) then
                failed = tostring(ok and err or done)
            end
        end
        open = false
    end
    function s.reset()
        c.clear()
        total, failed, stop, open = 0, nil, false, false
    end
    -- After the pass: writes the rest and ends the batch for the sink.
    -- Returns stop (on_error said so), err.
    function s.finish()
        flush()
        s.close()
        return stop, failed
    end
    return s
end


-- foreach_record's call of the user function, by shape.
local function record_caller(node)
    local f, shape = node.fn, node.shape
    if shape == "one" then
        return function(a, b) f(a) end
    elseif shape == "pair" then
        return f
    end
    return function(a, b)
        if b == nil then
            f(a)
        else
            f(a, b)
        end
    end
end


-- Compiles a loaded job. Returns run(view_ptr) -> ok, failed, err, fatal.
-- host: the runtime host (log, checkpoint_dir).
function _M.compile(job, host)
    local nodes = job.nodes
    local name = job.name
    local fails = failures.new(name, job.on_error, host)
    local ctx = { job = name, time = 0 }

    -- Which nodes lead to an output. Children come after parents in
    -- creation order, so one backward sweep settles it.
    local live = {}
    for i = #nodes, 1, -1 do
        local node = nodes[i]
        local is_live = node.is_output or false
        for _, c in ipairs(node.children) do
            if live[c] then
                is_live = true
            end
        end
        live[node] = is_live
    end

    local input = {}            -- node -> function its parents push into
    local source_push = {}      -- source number -> push of the source stream
    local wides = {}            -- { node, w, out } in creation order
    local collectors = {}       -- output node -> collector
    local streamers = {}        -- sink output node -> streamer

    for i = #nodes, 1, -1 do
        local node = nodes[i]
        if live[node] then
            local outs = {}
            for _, c in ipairs(node.children) do
                if live[c] then
                    outs[#outs + 1] = input[c]
                end
            end
            local out = fanout(outs)
            local op = node.op

            if node.source then
                source_push[node.source] = out
            elseif node.is_output and node.write then
                local w = make_streamer(node, ctx, fails)
                streamers[node] = w
                input[node] = w.push
            elseif node.is_output then
                local c = make_collector(node)
                collectors[node] = c
                input[node] = c.push
            elseif WIDE[op] then
                local w
                if op == "reduce_by_key" then
                    w = make_by_key(node)
                elseif op == "count_by_value" then
                    w = make_by_key(node, "count")
                elseif op == "group_by_key" then
                    w = make_group_by_key(node)
                elseif op == "count" then
                    w = make_count()
                elseif op == "reduce" then
                    w = make_reduce(node)
                else
                    w = make_transform(node, ctx)
                end
                input[node] = w.push
                wides[#wides + 1] = { node = node, w = w, out = out }
            elseif op == "map" then
                input[node] = make_map(node, out)
            elseif op == "filter" then
                input[node] = make_filter(node, out)
            elseif op == "flat_map" then
                input[node] = make_flat_map(node, out)
            elseif op == "map_values" then
                input[node] = make_map_values(node, out)
            elseif op == "union" then
                input[node] = out
            else
                error("ember.executor: unknown operation " .. tostring(op))
            end
        end
    end
    -- wides were gathered backwards
    for i = 1, #wides / 2 do
        local j = #wides - i + 1
        wides[i], wides[j] = wides[j], wides[i]
    end

    local outputs = job.outputs
    local nsources = #job.sources

    -- The index of the element in hand, read by the error handlers.
    local cur = 0

    local function source_loop(push, recs, arena, from, n)
        for i = from, n - 1 do
            cur = i
            local r = recs[i]
            push(ffi_string(arena + r.value_off, r.value_len), nil)
        end
    end

    -- format = "record": each element is a table with the record's value,
    -- key, timestamp, position and the source's own metadata.
    local function record_loop(push, recs, arena, from, n, kind)
        for i = from, n - 1 do
            cur = i
            push(record_table(recs[i], arena, kind), nil)
        end
    end
    -- format = "json": each element is the value decoded, straight from
    -- the block's bytes (no string of the raw record is made).
    local function json_loop(push, recs, arena, from, n)
        for i = from, n - 1 do
            cur = i
            local r = recs[i]
            local v = decode_bytes(arena + r.value_off, r.value_len)
            if v == nil then
                error("json: the record is null", 0)
            end
            push(v, nil)
        end
    end
    local LOOPS = { value = source_loop, record = record_loop, json = json_loop }
    local source_kind, source_format = {}, {}
    for i, src in ipairs(job.sources) do
        source_kind[i], source_format[i] = src.type, src.format
    end

    local function push_loop(push, ka, vb, from, n)
        for i = from, n do
            cur = i
            push(ka[i], vb[i])
        end
    end

    -- Runs push over ka/vb[from..n] under the policy; true means stop.
    local function guarded_push(push, ka, vb, n, shape)
        local from = 1
        while from <= n do
            local ok, err = pcall(push_loop, push, ka, vb, from, n)
            if ok then
                return false
            end
            local i = cur
            local _, text = pcall(describe, ka[i], vb[i], shape)  -- __tostring may raise
            if fails:add(err, text) then
                return true
            end
            from = i + 1
        end
        return false
    end

    local function batch_note(n)
        return "<batch of " .. n .. " record" .. (n == 1 and "" or "s") .. ">"
    end

    local function run(view)
        local time = tonumber(view.time_ms)
        ctx.time = time
        fails:begin(time)

        for i = 1, #wides do
            wides[i].w.reset()
        end
        for i = 1, #outputs do
            local o = outputs[i]
            local c = collectors[o] or streamers[o]
            c.reset()
        end

        -- source pass
        local blocks, sources = view.blocks, view.sources
        for bi = 0, view.nblocks - 1 do
            local s = sources[bi]
            if s < 1 or s > nsources then
                error("batch view: block " .. bi .. " names source " .. s
                      .. ", the job has " .. nsources)
            end
            local push = source_push[s]
            local blk = blocks[bi]
            local n = blk.count
            if push and n > 0 then
                local recs, arena = blk.records, blk.arena
                local from = 0
                local loop = LOOPS[source_format[s]]
                while true do
                    local ok, err = pcall(loop, push, recs, arena, from, n, source_kind[s])
                    if ok then
                        break
                    end
                    local i = cur
                    local r = recs[i]
                    if fails:add(err, ffi_string(arena + r.value_off, r.value_len)) then
                        return false
                    end
                    from = i + 1
                    if from >= n then
                        break
                    end
                end
            end
        end

        -- wide operations, in topological order
        for i = 1, #wides do
            local wd = wides[i]
            local ok, ka, vb, n = pcall(wd.w.finish)
            if not ok then
                local size = wd.w.size and wd.w.size() or 0
                if fails:add(ka, batch_note(size)) then
                    return false
                end
            elseif n > 0 and guarded_push(wd.out, ka, vb, n, wd.node.shape) then
                return false
            end
        end

        -- outputs, in declaration order
        for i = 1, #outputs do
            local node = outputs[i]
            local kind = node.op
            if node.write then
                -- A sink, written while the batch was computed. A record it
                -- cannot write (its user function raised, or returned what
                -- the system cannot take) is the user's fault and followed
                -- on_error, so one bad record never stalls the job; a
                -- failure to deliver is the server's, and fails the batch
                -- (retried by the driver) whatever on_error says.
                local stop, err = streamers[node].finish()
                if stop then
                    return false
                end
                if err then
                    return false, node.op .. " (" .. node.where .. "): " .. err
                end
            elseif kind == "foreach_record" then
                local ka, vb, n = collectors[node].get()
                if guarded_push(record_caller(node), ka, vb, n, node.shape) then
                    return false
                end
            else
                local ka, vb, n = collectors[node].get()
                local info = { time = time, job = name, count = n }
                local ok, err = pcall(sinks[kind], node, ka, vb, n, info)
                if not ok and fails:add(err, batch_note(n)) then
                    return false
                end
            end
        end
        return true
    end

    return function(view_ptr)
        local view = ffi_cast(view_ptr_t, view_ptr)
        local ok, res, sink_err = pcall(run, view)
        -- A batch that stopped early leaves no sink waiting on its server.
        for i = 1, #outputs do
            local w = streamers[outputs[i]]
            if w then
                w.close()
            end
        end
        local failed, first_err, io_err = fails:finish()
        if ok and not res and sink_err then
            return false, failed, sink_err, false
        end
        if not ok then
            -- A fault of ember itself or a malformed view, not of a user
            -- function: stop the job rather than retry it forever.
            local msg = "job '" .. name .. "': internal error: " .. tostring(res)
            if host and host.log then
                pcall(host.log, "error", name, msg)
            end
            return false, failed, msg, true
        end
        if not res or io_err then
            return false, failed, io_err or first_err, true
        end
        return true, failed, first_err, false
    end
end


return _M
