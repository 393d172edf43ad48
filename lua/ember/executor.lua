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
--
-- Operators that keep state across batches (update_state_by_key,
-- map_with_state) are driven like wide operations; their state lives in
-- the job's store (ember.state), which stages a batch's changes until the
-- driver commits it.
--
-- The operators live by concept: ember.narrow (map, filter, ...),
-- ember.wide (per-batch reductions), ember.collect (outputs' collectors and
-- sinks' streamers), ember.records (format = "record").

local ffi = require "ffi"
local eff = require "ember.ffi"
local sinks = require "ember.sinks"
local json = require "ember.json"
local failures = require "ember.failures"
local narrow = require "ember.narrow"
local wide = require "ember.wide"
local collect = require "ember.collect"
local records = require "ember.records"
local state_ops = require "ember.state_ops"
local join_ops = require "ember.join_ops"
local tables = require "ember.table"
local lookup = require "ember.lookup"
local bytes = require "ember.bytes"

local ffi_string = ffi.string
local ffi_cast = ffi.cast
local view_ptr_t = eff.view_ptr_t
local pcall = pcall
local type = type
local error = error
local tostring = tostring
local tonumber = tonumber
local ipairs = ipairs
local decode_bytes = json.decode_bytes
local describe = sinks.describe
local record_table = records.record_table
local fanout = narrow.fanout
local make_collector = collect.collector
local make_streamer = collect.streamer
local record_caller = collect.record_caller
local make_guard = collect.guard
local make_chunked = collect.chunked
local new_view = bytes.view
local settle = bytes.settle


local _M = {}
_M.SINK_CHUNK = collect.SINK_CHUNK


-- The outputs of ember's own that stream: each gives the handlers
-- collect.chunked calls (chunk, finish, abort).
local CHUNKED = {
    save_as_text_files = function(node)
        local w = sinks.text_files(node)
        return { chunk = w.chunk, finish = w.finish, abort = w.abort }
    end,
    -- print(n) keeps the first n elements and counts the rest.
    print = function(node)
        local limit, shape = node.n, node.shape
        local pa, pb, kept = {}, {}, 0
        local h = {}
        function h.chunk(ka, vb, n)
            for i = 1, n do
                if kept >= limit then
                    break
                end
                kept = kept + 1
                pa[kept], pb[kept] = ka[i], vb[i]
            end
        end
        function h.finish(info, total)
            local ok, err = pcall(sinks.print, node, pa, pb, total, info)
            pa, pb, kept = {}, {}, 0
            if not ok then
                error(err, 0)
            end
        end
        function h.abort()
            pa, pb, kept = {}, {}, 0
        end
        h.shape = shape
        return h
    end,
    -- foreach_record: the user function per element, on_error per element.
    foreach_record = function(node, fails)
        local call, shape = record_caller(node), node.shape
        local guard = make_guard(fails)
        return {
            chunk = function(ka, vb, n) return guard(call, ka, vb, n, shape) end,
            finish = function() end,
            abort = function() end,
        }
    end,
}


-- A consumer that may keep what it gets (a wide operation, state, a join,
-- an output) gets strings, not views of format = "bytes": a view is only
-- valid while its batch runs. count() looks at no element.
local function settled(push)
    return function(a, b)
        push(settle(a), settle(b))
    end
end


-- Which nodes may push views: a source of format = "bytes", and narrow
-- operations below one (a map may return the view it got).
local function carries_views(nodes, job)
    local carries = {}
    for _, node in ipairs(nodes) do
        local c = false
        if node.source then
            c = job.sources[node.source].format == "bytes"
        elseif narrow.ops[node.op] or node.op == "union" then
            for _, p in ipairs(node.parents) do
                c = c or carries[p] or false
            end
        end
        carries[node] = c
    end
    return carries
end


-- Compiles a loaded job. Returns run(view_ptr, batch_id) -> ok, failed,
-- err, fatal. host: the runtime host (log, checkpoint_dir); store: the
-- job's state store (ember.state), or nil for a job without state.
function _M.compile(job, host, store)
    local nodes = job.nodes
    local name = job.name
    local fails = failures.new(name, job.on_error, host)
    local ctx = { job = name, time = 0, batch_id = nil }
    if store then
        store.fails = fails
    end

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

    local carries = carries_views(nodes, job)
    local input = {}            -- node -> function its parents push into
    local source_push = {}      -- source number -> push of the source stream
    local wides = {}            -- { node, w, out } in creation order
    local collectors = {}       -- output node -> collector
    local streamers = {}        -- sink output node -> streamer
    local chunked = {}          -- streaming output of ember's own -> its writer

    for i = #nodes, 1, -1 do
        local node = nodes[i]
        if live[node] then
            local outs = {}
            local joined = {}
            for _, c in ipairs(node.children) do
                if live[c] and not c.side then      -- late() is fed by its op
                    local inp = input[c]
                    if type(inp) == "table" then    -- a join: one push per side, and a
                        if not joined[c] then       -- stream joined with itself pushes once
                            joined[c] = true
                            inp = inp[node]
                        else
                            inp = nil
                        end
                    end
                    if inp and carries[node] and not carries[c] and c.op ~= "count" then
                        inp = settled(inp)
                    end
                    outs[#outs + 1] = inp
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
            elseif node.is_output and CHUNKED[op] then
                local w = make_chunked(node, ctx, CHUNKED[op](node, fails))
                chunked[node] = w
                input[node] = w.push
            elseif node.is_output then
                local c = make_collector(node)
                collectors[node] = c
                input[node] = c.push
            elseif state_ops.is_stateful(op) then
                local w = state_ops.make(node, ctx, out, store)
                input[node] = w.push
                if store.changelog and node.state_name then -- ember.state_changelog
                    input[node] = store.changelog.wrap(node, w.push, ctx)
                end
                wides[#wides + 1] = { node = node, w = w, out = out }
            elseif lookup.is_lookup(op) then
                local w = lookup.make(node, ctx, fails)
                input[node] = w.push
                wides[#wides + 1] = { node = node, w = w, out = out }
            elseif join_ops.is_join(op) then
                local w = join_ops.make(node, ctx)
                input[node] = w.inputs
                wides[#wides + 1] = { node = node, w = w, out = out }
            elseif wide.is_wide(op) then
                local w = wide.make(node, ctx)
                input[node] = w.push
                wides[#wides + 1] = { node = node, w = w, out = out }
            elseif narrow.ops[op] then
                input[node] = narrow.ops[op](node, out)
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
    -- The block in hand, so that event time knows a record's source and
    -- Kafka partition (ctx.source, ctx.partition()).
    local cur_blk, cur_run = nil, 0
    function ctx.partition()
        local blk = cur_blk
        if not blk or blk.nruns == 0 then
            return -1
        end
        -- The run holding record cur: mostly the one before (runs are
        -- stretches of one partition, read in order).
        local k = cur_run
        if k >= blk.nruns or blk.runs[k].first > cur then
            k = 0
        end
        while k + 1 < blk.nruns and blk.runs[k + 1].first <= cur do
            k = k + 1
        end
        cur_run = k
        return blk.runs[k].partition
    end

    -- The Kafka partitions assigned to the job's sources when the batch was
    -- cut, as (source, partition) pairs: fn(source, partition) for each.
    function ctx.each_assigned(fn)
        local view = ctx.view
        if not view or view.nassigned == 0 or view.assigned == nil then
            return
        end
        local a = view.assigned
        for i = 0, view.nassigned - 1 do
            fn(a[2 * i], a[2 * i + 1])
        end
    end

    local function source_loop(push, recs, arena, from, n)
        for i = from, n - 1 do
            cur = i
            local r = recs[i]
            push(ffi_string(arena + r.value_off, r.value_len), nil)
        end
    end

    -- format = "bytes": each element is a view of the value in the block
    -- (ember.bytes), valid while the batch runs.
    local function bytes_loop(push, recs, arena, from, n)
        for i = from, n - 1 do
            cur = i
            local r = recs[i]
            push(new_view(arena + r.value_off, r.value_len), nil)
        end
    end

    -- format = "record": each element is a table with the record's value,
    -- key, timestamp, position and the source's own metadata.
    -- A block's records come in runs (core/block.h): each run's shared
    -- fields are read once for its records.
    local function record_loop(push, recs, arena, from, n, kind, runs, nruns)
        for k = 0, nruns - 1 do
            local run = runs[k]
            local last = k + 1 < nruns and runs[k + 1].first or n
            local first = run.first
            for i = (from > first and from or first), last - 1 do
                cur = i
                push(record_table(recs[i], run, arena, kind), nil)
            end
        end
    end
    -- format = "json": each element is the value decoded, straight from
    -- the block's bytes (no string of the raw record is made); a source
    -- with fields = {...} decodes only those (json.projection).
    local function json_loop_of(decode)
        return function(push, recs, arena, from, n)
            for i = from, n - 1 do
                cur = i
                local r = recs[i]
                local v = decode(arena + r.value_off, r.value_len)
                if v == nil then
                    error("json: the record is null", 0)
                end
                push(v, nil)
            end
        end
    end
    local LOOPS = { value = source_loop, record = record_loop, json = json_loop_of(decode_bytes),
                    bytes = bytes_loop }
    local source_kind, source_loop_of = {}, {}
    for i, src in ipairs(job.sources) do
        source_kind[i] = src.type
        source_loop_of[i] = src.fields and json_loop_of(json.projection(src.fields))
                            or LOOPS[src.format]
    end

    -- Pushes a wide operation's results under the policy; true means stop.
    local guarded_push = make_guard(fails)

    local function batch_note(n)
        return "<batch of " .. n .. " record" .. (n == 1 and "" or "s") .. ">"
    end

    local function run(view)
        local time = tonumber(view.time_ms)
        ctx.time = time
        ctx.view = view
        fails:begin(time)

        for i = 1, #wides do
            wides[i].w.reset()
        end
        for i = 1, #outputs do
            local o = outputs[i]
            local c = collectors[o] or streamers[o] or chunked[o]
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
                ctx.source, cur_blk, cur_run = s, blk, 0
                local from = 0
                local loop = source_loop_of[s]
                while true do
                    local ok, err = pcall(loop, push, recs, arena, from, n, source_kind[s],
                                          blk.runs, blk.nruns)
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

        ctx.source, cur_blk = 0, nil

        -- wide operations, in topological order
        for i = 1, #wides do
            local wd = wides[i]
            local ok, ka, vb, n, io_err, stop = pcall(wd.w.finish)
            if ok and (io_err or stop) then
                -- a lookup's server failed (the batch runs again), or
                -- on_error stopped it
                return false, io_err
            elseif not ok then
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
            elseif chunked[node] then
                -- Written chunk by chunk during the pass; this ends it.
                local stop, err, n = chunked[node].finish()
                if stop or (err and fails:add(err, batch_note(n))) then
                    return false
                end
            else
                local ka, vb, n = collectors[node].get()
                local info = { time = time, job = name, count = n, batch_id = ctx.batch_id }
                local ok, err = pcall(sinks[kind], node, ka, vb, n, info)
                if not ok and fails:add(err, batch_note(n)) then
                    return false
                end
            end
        end
        return true
    end

    return function(view_ptr, batch_id)
        local view = ffi_cast(view_ptr_t, view_ptr)
        ctx.batch_id = batch_id
        -- Reference tables are loaded (or refreshed) between batches; one
        -- never loaded makes the batch wait: it is retried, not run.
        if job.tables then
            local ready, why = tables.before_batch(job, tonumber(view.time_ms))
            if not ready then
                return false, 0, why, false
            end
        end
        if store then
            store:begin(batch_id)
        end
        bytes.begin()
        local ok, res, sink_err = pcall(run, view)
        bytes.finish()              -- views of this batch are stale from here
        -- A batch that stopped early leaves no sink waiting on its server.
        for i = 1, #outputs do
            local w = streamers[outputs[i]] or chunked[outputs[i]]
            if w then
                w.close()
            end
        end
        local failed, first_err, io_err = fails:finish()
        if store then
            -- A bad state value or state.max stops the job: running the
            -- batch again would meet them again.
            local max_err = store:ran(ok and res and not io_err)
            local fatal = store.fatal or max_err
            if fatal then
                store.phase = "failed"
                return false, failed, fatal, true
            end
        end
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
