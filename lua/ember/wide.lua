-- ember.wide: the wide operations of one batch (reduce_by_key,
-- group_by_key, count, count_by_value, reduce, transform).
--
-- Each is { push = accumulate, reset = new state for a batch,
-- finish = () -> ka, vb, n results to push downstream }. Their state lasts
-- one batch; operators that keep state across batches are in ember.state_ops.

local sinks = require "ember.sinks"
local narrow = require "ember.narrow"

local error = error
local type = type
local describe = sinks.describe
local materialize = sinks.materialize
local where_of = narrow.where_of
local not_a_pair = narrow.not_a_pair


local _M = {}


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
                      { time = ctx.time, job = ctx.job, count = n, batch_id = ctx.batch_id })
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


local MAKERS = {
    reduce_by_key = function(node) return make_by_key(node) end,
    count_by_value = function(node) return make_by_key(node, "count") end,
    group_by_key = make_group_by_key,
    count = make_count,
    reduce = make_reduce,
    transform = make_transform,
}

function _M.is_wide(op)
    return MAKERS[op] ~= nil
end

-- The per-batch state of a wide node.
function _M.make(node, ctx)
    return MAKERS[node.op](node, ctx)
end


return _M
