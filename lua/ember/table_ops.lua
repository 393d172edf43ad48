-- ember.table_ops: joins of a keyed stream with a reference table
-- (ember.table), looked up in process, record by record:
--
--   s:join(tbl)              (k, { v, tbl[k] }) when the table holds k
--   s:left_outer_join(tbl)   the same, and (k, { v }) when it does not
--
-- The shape is the one of the stream-stream joins (ember.join_ops), so a
-- job can swap a stream for a table without touching what follows. Unlike
-- them, a table join is narrow: each record is joined as it passes (one
-- Lua table index), in the order it came, and no batch is gathered. The
-- table is the one before_batch left for this batch (ember.table), so an
-- update or delete read between two batches applies to every record of
-- the later one.
--
-- stream:join and stream:left_outer_join keep their stream-stream meaning
-- when given a DStream; given a table they make a join_table or
-- left_outer_join_table node, a narrow operation (ember.narrow's ops).

local narrow = require "ember.narrow"
local tables = require "ember.table"

local error = error
local pairs = pairs
local is_table = tables.is_table
local not_a_pair = narrow.not_a_pair


local _M = {}

local KINDS = { join = "join_table", left_outer_join = "left_outer_join_table" }


local function make_join(node, out)
    local tbl = node.table
    local outer = node.op == "left_outer_join_table"
    return function(a, b)
        if b == nil then
            not_a_pair(node, a)
        end
        local tv = tbl.data[a]
        if tv ~= nil then
            out(a, { b, tv })
        elseif outer then
            out(a, { b })
        end
    end
end


-- Wraps DStream.join / left_outer_join (declared by ember.join_ops) so a
-- table argument makes a table join. h: dstream's helpers.
function _M.declare(DStream, h)
    for kind, op in pairs(KINDS) do
        local stream_join = DStream[kind]
        DStream[kind] = function(self, other)
            if not is_table(other) then
                -- a tail call: its errors point at the user's line
                return stream_join(self, other)
            end
            h.check_self(self, kind)
            if other.job ~= self.job then
                error("bad argument #1 to '" .. kind .. "' (a table of the same job expected; "
                      .. "the table was declared at " .. other.where .. ")", 2)
            end
            h.need_pairs(self, kind)
            local node = h.new_node(self.job, op, { self }, "pair", h.where(2))
            node.table = other
            return node
        end
    end
    narrow.ops.join_table = make_join
    narrow.ops.left_outer_join_table = make_join
end


return _M
