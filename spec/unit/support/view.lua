-- Builds em_batch_view cdata in Lua, as the C core would hand them to
-- run_batch, so the runtime can be tested (and benchmarked) without C.
--
--   local view = require "support.view"
--   local v = view.batch(1000, { source = 1, "a", "b" }, { source = 2, "c" })
--   desc.run_batch(v.ptr)
--
-- A block's records are strings (the value) or { value = , key = , partition = }. The
-- returned table anchors every allocation: keep it alive while the view is used.

local ffi = require "ffi"
require "ember.ffi"

local ffi_new = ffi.new
local ffi_copy = ffi.copy
local NO_KEY = 0xFFFFFFFF


local _M = {}


-- One em_block holding the records; returns the cdata and its anchors.
function _M.block(records)
    local n = #records
    local size = 0
    for i = 1, n do
        local r = records[i]
        if type(r) == "table" then
            size = size + #r.value + #(r.key or "")
        else
            size = size + #r
        end
    end
    local arena = ffi_new("char[?]", size + 1)
    local recs = ffi_new("em_record[?]", n + 1)
    local off = 0
    for i = 1, n do
        local r = records[i]
        local value, key = r, nil
        if type(r) == "table" then
            value, key = r.value, r.key
        end
        local rec = recs[i - 1]
        ffi_copy(arena + off, value, #value)
        rec.value_off, rec.value_len = off, #value
        off = off + #value
        if key then
            ffi_copy(arena + off, key, #key)
            rec.key_off, rec.key_len = off, #key
            off = off + #key
        else
            rec.key_off, rec.key_len = NO_KEY, 0
        end
        rec.ts_ms, rec.offset = 0, i - 1
        rec.partition = type(r) == "table" and r.partition or -1
    end
    local blk = ffi_new("em_block")
    blk.records, blk.arena, blk.count, blk.arena_len = recs, arena, n, off
    return blk, { arena, recs }
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


return _M
