-- ember.collect: what outputs receive during a batch. A collector holds
-- the elements an output gets; a sink's streamer writes them in chunks of
-- SINK_CHUNK while the batch is computed, so a batch of a million records
-- never lives in memory as a million tables.

local sinks = require "ember.sinks"

local pcall = pcall
local tostring = tostring
local describe = sinks.describe
local materialize = sinks.materialize
local tbl_clear = require "table.clear"


local _M = {}


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
            info.batch_id = ctx.batch_id
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


-- Runs push over ka/vb[1..n], applying on_error to an element whose
-- push raised and resuming after it; returns true when on_error says
-- stop. Each guard keeps its own index of the element in hand, so a guard
-- may run inside another one's loop (an output's chunk written while a
-- wide operation flushes).
local function make_guard(fails)
    local cur = 0
    local function loop(push, ka, vb, from, n)
        for i = from, n do
            cur = i
            push(ka[i], vb[i])
        end
    end
    return function(push, ka, vb, n, shape)
        local from = 1
        while from <= n do
            local ok, err = pcall(loop, push, ka, vb, from, n)
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
end


-- An output of ember's own that streams (save_as_text_files, print,
-- foreach_record): h.chunk(ka, vb, n, info) gets the elements in chunks of
-- SINK_CHUNK while the batch is computed, h.finish(info, total) ends the
-- batch, h.abort() drops what a failed or stopped batch left. chunk may
-- return true (on_error said stop) or raise: the output then takes no
-- more chunks this batch, and finish() reports the error for the job's
-- on_error policy, as a failure of the whole batch of this output.
local function make_chunked(node, ctx, h)
    local total, err, stop, open = 0, nil, false, false
    local info = { job = ctx.job, shape = node.shape }
    local c

    local function flush()
        local ka, vb, n = c.get()
        if n > 0 and not err and not stop then
            open = true
            info.time, info.count, info.first = ctx.time, n, total + 1
            info.batch_id = ctx.batch_id
            local ok, res = pcall(h.chunk, ka, vb, n, info)
            if not ok then
                err = res
            elseif res then
                stop = true
            end
            if err or stop then
                pcall(h.abort)
                open = false
            end
        end
        total = total + n
        c.clear()
    end
    c = make_collector(node, SINK_CHUNK, flush)

    local s = { push = c.push }
    function s.reset()
        c.clear()
        total, err, stop, open = 0, nil, false, false
    end
    -- After the pass: the last chunk, then the end of the batch. Returns
    -- stop, err, the element count.
    function s.finish()
        flush()
        if not err and not stop then
            info.time, info.count, info.batch_id = ctx.time, total, ctx.batch_id
            local ok, res = pcall(h.finish, info, total)
            if not ok then
                err = res
                pcall(h.abort)
            end
        end
        open = false
        return stop, err, total
    end
    -- A batch that stopped early leaves no temp file behind.
    function s.close()
        if open then
            pcall(h.abort)
        end
        open = false
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



_M.collector = make_collector
_M.streamer = make_streamer
_M.record_caller = record_caller
_M.guard = make_guard
_M.chunked = make_chunked


return _M
