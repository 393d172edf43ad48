-- ember.narrow: the narrow operations (map, filter, flat_map, map_values)
-- as push closures, and the helpers every operator shares.
--
-- Every element travels as two arguments (a, b): a single value is (x, nil),
-- a pair is (k, v). Each operation is a closure with that fixed signature
-- calling its consumer; a stream with several consumers calls each in turn
-- (fanout). No per-record table, no varargs (they stop the JIT).

local sinks = require "ember.sinks"

local error = error
local type = type
local describe = sinks.describe


local _M = {}


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


_M.fanout = fanout
_M.where_of = where_of
_M.not_a_pair = not_a_pair
-- op -> maker(node, out) returning the push function of the node.
_M.ops = { map = make_map, filter = make_filter, flat_map = make_flat_map,
           map_values = make_map_values }


return _M
