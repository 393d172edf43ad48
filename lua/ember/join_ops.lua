-- ember.join_ops: joins of two keyed streams within a batch, as Spark's
-- DStream joins (docs/lua-api.md#joins):
--
--   a:join(b)              (k, { va, vb }) for every pair of values of a key in both
--   a:left_outer_join(b)   (k, { va, vb }) and (k, { va }) where b has no value of k
--   a:full_outer_join(b)   ... and (k, { nil, vb }) where a has none
--   a:cogroup(b)           (k, { { va... }, { vb... } }) per key in either
--
-- Both streams are of the same job; the operator gathers each side's values
-- per key during the batch and joins them when the batch's records are in,
-- like the other wide operations. Keys come out in the order they first
-- appeared (on the left side first).

local error = error
local type = type
local getmetatable = getmetatable
local pairs = pairs


local _M = {}

local KINDS = { join = true, left_outer_join = true, full_outer_join = true, cogroup = true }


function _M.is_join(op)
    return KINDS[op] == true
end


function _M.declare(DStream, h)
    for kind in pairs(KINDS) do
        DStream[kind] = function(self, other)
            h.check_self(self, kind)
            if getmetatable(other) ~= DStream then
                error("bad argument #1 to '" .. kind .. "' (DStream expected, got "
                      .. type(other) .. ")", 2)
            end
            if other.job ~= self.job then
                error("bad argument #1 to '" .. kind .. "' (a stream of the same job expected)", 2)
            end
            h.need_pairs(self, kind)
            if other.shape == "one" then
                error("bad argument #1 to '" .. kind .. "' (a stream of (key, value) pairs "
                      .. "expected, but the stream from '" .. other.op .. "' at " .. other.where
                      .. " carries single values)", 2)
            end
            local node = h.new_node(self.job, kind, { self, other }, "pair", h.where(2))
            return node
        end
    end
end


-- The per-batch object: inputs[parent] is the push of each side (both, in
-- turn, for a stream joined with itself).
function _M.make(node)
    local kind = node.op
    local left, right = node.parents[1], node.parents[2]
    local idx, keys, lv, rv, n
    local w = {}

    function w.reset()
        idx, keys, lv, rv, n = {}, {}, {}, {}, 0
    end

    local function slot(k)
        local p = idx[k]
        if p == nil then
            n = n + 1
            p = n
            idx[k] = p
            keys[p] = k
            lv[p], rv[p] = {}, {}
        end
        return p
    end

    local function check(b, side)
        if b == nil then
            error(kind .. " at " .. node.where .. ": (key, value) pair expected on the "
                  .. side .. " side, got a single value", 0)
        end
    end

    local function push_left(a, b)
        check(b, "left")
        local g = lv[slot(a)]
        g[#g + 1] = b
    end

    local function push_right(a, b)
        check(b, "right")
        local g = rv[slot(a)]
        g[#g + 1] = b
    end

    w.inputs = {}
    if left == right then
        w.inputs[left] = function(a, b)
            push_left(a, b)
            push_right(a, b)
        end
    else
        w.inputs[left], w.inputs[right] = push_left, push_right
    end
    w.push = push_left

    function w.size()
        return n
    end

    function w.finish()
        local ka, vb, m = {}, {}, 0
        for p = 1, n do
            local k, ls, rs = keys[p], lv[p], rv[p]
            if kind == "cogroup" then
                m = m + 1
                ka[m], vb[m] = k, { ls, rs }
            else
                local nl, nr = #ls, #rs
                if nl > 0 and nr > 0 then
                    for i = 1, nl do
                        for j = 1, nr do
                            m = m + 1
                            ka[m], vb[m] = k, { ls[i], rs[j] }
                        end
                    end
                elseif nl > 0 and kind ~= "join" then
                    for i = 1, nl do
                        m = m + 1
                        ka[m], vb[m] = k, { ls[i] }
                    end
                elseif nr > 0 and kind == "full_outer_join" then
                    for j = 1, nr do
                        m = m + 1
                        ka[m], vb[m] = k, { nil, rs[j] }
                    end
                end
            end
        end
        return ka, vb, m
    end

    return w
end


return _M
