-- ember.dstream: the DStream API, a graph of operations declared at load time.
--
-- A DStream is a node: its operation, its parents and consumers, the user
-- function, and its shape. The shape says what an element is:
--   "one"   a single value (sources, flat_map, count, reduce, transform)
--   "pair"  a (key, value) pair (map_values, reduce_by_key, group_by_key,
--           count_by_value)
--   "any"   decided per element (map, and what it feeds): an element is a
--           pair when its second value is not nil. A map whose function
--           returns two values thus makes a keyed stream, as in
--           :map(function(p) return p.device, p.pm25 end):reduce_by_key(max).
-- Knowing the shape at load time lets misuse (reduce_by_key on single
-- values) fail at the user's line, and lets the executor call user
-- functions with exactly the arguments an element has (cjson.decode
-- rejects a second argument, even nil).
--
-- Nothing runs here: ember.executor compiles the graph once the script has
-- run. Misuse raises OpenResty style, at the caller's line (error level 2).

local error = error
local type = type
local tostring = tostring
local setmetatable = setmetatable
local getmetatable = getmetatable
local math_floor = math.floor
local debug_getinfo = debug.getinfo
local str_sub = string.sub


local _M = {}

local DStream = {}
DStream.__index = DStream
_M.DStream = DStream


-- "file:line" of the function at the given level above the caller.
function _M.where(level)
    local info = debug_getinfo(level + 1, "Sl")
    if not info then
        return "?"
    end
    local src = info.source
    if str_sub(src, 1, 1) == "@" then
        src = str_sub(src, 2)
    else
        src = info.short_src
    end
    return src .. ":" .. (info.currentline or 0)
end
local where = _M.where


function _M.is_dstream(v)
    return getmetatable(v) == DStream
end


local function describe(node)
    return "'" .. node.op .. "' at " .. node.where
end


local function new_node(job, op, parents, shape, where_)
    local node = setmetatable({
        job = job,
        id = #job.nodes + 1,
        op = op,
        parents = parents,
        shape = shape,
        where = where_,
        children = {},
    }, DStream)
    job.nodes[node.id] = node
    for i = 1, #parents do
        local ch = parents[i].children
        ch[#ch + 1] = node
    end
    return node
end


-- Called by job:<source>{...}; index is the source number C puts in views.
function _M.new_source(job, index, kind, where_)
    local node = new_node(job, kind, {}, "one", where_)
    node.source = index
    return node
end


local callable = require "ember.callable"


-- Checks self and the job's state; level 3 is the user's call.
local function check_self(self, name)
    if getmetatable(self) ~= DStream then
        error("calling '" .. name .. "' on bad self (DStream expected; use stream:"
              .. name .. "(...))", 3)
    end
    if self.job.sealed then
        error("cannot add '" .. name .. "' to job '" .. tostring(self.job.name)
              .. "' once it is loaded (declare the graph at the top level of the script)", 3)
    end
end


local function check_fn(name, f)
    if not callable(f) then
        error("bad argument #1 to '" .. name .. "' (function expected, got "
              .. type(f) .. ")", 3)
    end
end


local function need_pairs(self, name)
    if self.shape == "one" then
        error("'" .. name .. "' needs a stream of (key, value) pairs, but the stream from "
              .. describe(self) .. " carries single values; make pairs with "
              .. ":map(function(x) return key, value end)", 3)
    end
end


-- A narrow or wide transformation of one parent taking one function.
local function with_fn(name, shape, pairs_only)
    DStream[name] = function(self, f)
        check_self(self, name)
        check_fn(name, f)
        if pairs_only then
            need_pairs(self, name)
        end
        local node = new_node(self.job, name, { self }, shape or self.shape, where(2))
        node.fn = f
        return node
    end
end

with_fn("map", "any")
with_fn("flat_map", "one")
with_fn("filter", nil)              -- keeps its parent's shape
with_fn("map_values", "pair", true)
with_fn("reduce", "one")
with_fn("reduce_by_key", "pair", true)
with_fn("transform", "one")


function DStream:count()
    check_self(self, "count")
    return new_node(self.job, "count", { self }, "one", where(2))
end


function DStream:count_by_value()
    check_self(self, "count_by_value")
    if self.shape == "pair" then
        error("'count_by_value' needs a stream of single values, but the stream from "
              .. describe(self) .. " carries (key, value) pairs; pick the value with "
              .. ":map(function(k, v) return v end) first", 2)
    end
    return new_node(self.job, "count_by_value", { self }, "pair", where(2))
end


function DStream:group_by_key()
    check_self(self, "group_by_key")
    need_pairs(self, "group_by_key")
    return new_node(self.job, "group_by_key", { self }, "pair", where(2))
end


function DStream:union(other)
    check_self(self, "union")
    if getmetatable(other) ~= DStream then
        error("bad argument #1 to 'union' (DStream expected, got " .. type(other) .. ")", 2)
    end
    if other.job ~= self.job then
        error("bad argument #1 to 'union' (DStream of the same job expected, got one of job "
              .. "declared at " .. other.job.where .. ")", 2)
    end
    local shape = self.shape == other.shape and self.shape or "any"
    return new_node(self.job, "union", { self, other }, shape, where(2))
end


-- Outputs: leaves of the graph, run in declaration order per batch. Each
-- returns its input stream so outputs chain: s:print():save_as_text_files(..).

local function add_output(self, kind, where_)
    local node = new_node(self.job, kind, { self }, self.shape, where_)
    node.is_output = true
    local outputs = self.job.outputs
    outputs[#outputs + 1] = node
    node.output_index = #outputs
    return node
end


-- print(n, opts): opts.empty = false prints nothing for an empty batch
-- (Spark prints the header of every batch, the default here too).
function DStream:print(n, opts)
    check_self(self, "print")
    if n == nil then
        n = 10
    elseif type(n) ~= "number" or n < 1 or math_floor(n) ~= n then
        error("bad argument #1 to 'print' (positive integer expected, got "
              .. tostring(n) .. ")", 2)
    end
    if opts ~= nil and (type(opts) ~= "table" or (opts.empty ~= nil and type(opts.empty) ~= "boolean")) then
        error("bad argument #2 to 'print' (table with a boolean 'empty' expected)", 2)
    end
    local node = add_output(self, "print", where(2))
    node.n = n
    node.print_empty = not (opts and opts.empty == false)
    return self
end


function DStream:foreach_batch(f)
    check_self(self, "foreach_batch")
    check_fn("foreach_batch", f)
    add_output(self, "foreach_batch", where(2)).fn = f
    return self
end


function DStream:foreach_record(f)
    check_self(self, "foreach_record")
    check_fn("foreach_record", f)
    add_output(self, "foreach_record", where(2)).fn = f
    return self
end


function DStream:save_as_text_files(prefix, suffix)
    check_self(self, "save_as_text_files")
    if type(prefix) ~= "string" or prefix == "" then
        error("bad argument #1 to 'save_as_text_files' (non-empty string expected, got "
              .. type(prefix) .. ")", 2)
    end
    if suffix ~= nil and type(suffix) ~= "string" then
        error("bad argument #2 to 'save_as_text_files' (string expected, got "
              .. type(suffix) .. ")", 2)
    end
    local node = add_output(self, "save_as_text_files", where(2))
    node.prefix, node.suffix = prefix, (suffix ~= "" and suffix or nil)
    return self
end


-- Sinks to external systems: stream:to_kafka{...}, to_redis{...},
-- to_rabbitmq{...}. The system's module (lua/ember/sinks/<system>.lua)
-- checks the options at load time and returns the write function, called
-- per chunk of a batch, or { write =, finish = } when the sink waits for
-- its server once at the end of the batch (docs/internals.md); a write or
-- finish that returns nil, err fails the batch, which is then retried and,
-- failing still, left unacknowledged upstream.
local function sink_method(kind, system)
    return function(self, opts)
        check_self(self, kind)
        if type(opts) ~= "table" then
            error("bad argument #1 to '" .. kind .. "' (table expected, got " .. type(opts) .. ")", 2)
        end
        local ok, mod = pcall(require, "ember.sinks." .. system)
        if not ok or type(mod[kind]) ~= "function" then
            error(kind .. " is not available in this ember: " .. tostring(mod), 2)
        end
        local sink, err = mod[kind](opts)
        if not sink then
            error("bad argument #1 to '" .. kind .. "' (" .. tostring(err) .. ")", 2)
        end
        local node = add_output(self, kind, where(2))
        if type(sink) == "table" then
            node.write, node.finish = sink.write, sink.finish
        else
            node.write = sink
        end
        return self
    end
end

DStream.to_kafka = sink_method("to_kafka", "kafka")
DStream.to_redis = sink_method("to_redis", "redis")
DStream.to_rabbitmq = sink_method("to_rabbitmq", "rabbitmq")


-- Operators that keep state across batches (update_state_by_key,
-- map_with_state, state_snapshots) are declared by ember.state_ops.
-- Joins of two keyed streams within a batch (ember.join_ops).
require("ember.join_ops").declare(DStream, {
    new_node = new_node, check_self = check_self, need_pairs = need_pairs, where = where,
})

-- stream:join(table) and left_outer_join(table): lookups in a reference
-- table (ember.table_ops wraps the two joins above).
require("ember.table_ops").declare(DStream, {
    new_node = new_node, check_self = check_self, need_pairs = need_pairs, where = where,
})

-- stream:lookup_redis{...}: batched lookups in an external Redis.
require("ember.lookup").declare(DStream, {
    new_node = new_node, check_self = check_self, need_pairs = need_pairs, where = where,
})

require("ember.state_ops").declare(DStream, {
    new_node = new_node, check_self = check_self, check_fn = check_fn,
    need_pairs = need_pairs, where = where,
})


return _M
