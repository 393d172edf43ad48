-- Builds em_batch_view cdata in Lua, as the C core would hand them to
-- run_batch, so the runtime can be tested (and benchmarked) without C.
--
--   local view = require "support.view"
--   local v = view.batch(1000, { source = 1, "a", "b" }, { source = 2, "c" })
--   desc.run_batch(v.ptr)
--
-- A block's records are strings (the value) or { value = , key = ,
-- partition = }. The returned table anchors every allocation: keep it alive
-- while the view is used.

local ffi = require "ffi"
require "ember.ffi"

local ffi_new = ffi.new
local ffi_copy = ffi.copy
local bit = require "bit"
local NO_KEY = 0xFFFFFFFF
local RUN_KEYS = 1


local _M = {}


-- One em_block holding the records, in the compact layout of
-- core/block.h: one run per stretch of records of one partition (-1 when
-- they name none; no meta), a key length word in front of each value when
-- any record has a key. Returns the cdata and its anchors.
function _M.block(records)
    local n = #records
    local keyed = false
    local size = 0
    for i = 1, n do
        local r = records[i]
        if type(r) == "table" then
            size = size + #r.value + #(r.key or "")
            keyed = keyed or r.key ~= nil
        else
            size = size + #r
        end
    end
    if keyed then
        size = size + 4 * n
    end
    local arena = ffi_new("char[?]", size + 1)
    local recs = ffi_new("em_record[?]", n + 1)
    local function partition_of(r)
        return type(r) == "table" and r.partition or -1
    end
    local firsts = {}
    for i = 1, n do
        if i == 1 or partition_of(records[i]) ~= partition_of(records[i - 1]) then
            firsts[#firsts + 1] = i - 1
        end
    end
    if #firsts == 0 then
        firsts[1] = 0
    end
    local runs = ffi_new("em_run[?]", #firsts)
    for k, first in ipairs(firsts) do
        local run = runs[k - 1]
        run.base_offset, run.base_ts, run.first = 0, 0, first
        run.partition = n > 0 and partition_of(records[first + 1]) or -1
        run.meta_off, run.meta_len = 0, 0
        run.flags = keyed and RUN_KEYS or 0
    end
    local off = 0
    local function put_len(len)
        for b = 0, 3 do
            arena[off + b] = bit.band(bit.rshift(len, 8 * b), 0xFF)
        end
        off = off + 4
    end
    for i = 1, n do
        local r = records[i]
        local value, key = r, nil
        if type(r) == "table" then
            value, key = r.value, r.key
        end
        if keyed then
            if key then
                ffi_copy(arena + off, key, #key)
                off = off + #key
            end
            put_len(key and #key or NO_KEY)
        end
        local rec = recs[i - 1]
        ffi_copy(arena + off, value, #value)
        rec.value_off, rec.value_len = off, #value
        rec.offset_delta, rec.ts_delta = i - 1, 0
        off = off + #value
    end
    local blk = ffi_new("em_block")
    blk.records, blk.arena, blk.count, blk.arena_len = recs, arena, n, off
    blk.runs, blk.nruns = runs, #firsts
    return blk, { arena, recs, runs }
end


-- A batch view at time_ms of the given blocks ({ source = i, records... }).
function _M.batch(time_ms, ...)
    local specs = { ... }
    local nb = #specs
    local blocks = ffi_new("em_block *[?]", nb + 1)
    local sources = ffi_new("int32_t[?]", nb + 1)
    local keep = { blocks, sources }
    for i = 1, nb do
        local spec = specs[i]
        local blk, anchors = _M.block(spec)
        blocks[i - 1] = blk
        sources[i - 1] = spec.source or 1
        keep[#keep + 1] = blk
        keep[#keep + 1] = anchors
    end
    local v = ffi_new("em_batch_view")
    v.time_ms, v.nblocks, v.blocks, v.sources = time_ms, nb, blocks, sources
    keep[#keep + 1] = v
    return { ptr = ffi.cast("em_batch_view *", v), view = v, keep = keep }
end


-- Gives a batch (from _M.batch) the Kafka assignment of its cut: pairs
-- { source, partition }, as em_batch_cut notes them.
function _M.assign(v, pairs_)
    local a = ffi_new("int32_t[?]", 2 * #pairs_ + 1)
    for i, p in ipairs(pairs_) do
        a[2 * (i - 1)], a[2 * (i - 1) + 1] = p[1], p[2]
    end
    v.view.nassigned, v.view.assigned = #pairs_, a
    v.keep[#v.keep + 1] = a
    return v
end


return _M
