-- ember.ffi: the C structures Lua reads a batch through.
--
-- Mirrors the first fields of em_record, em_block and em_batch_view in
-- core/block.h: change both together. em_block is declared only up to the
-- fields Lua reads (records, arena, count, arena_len); Lua only ever reaches
-- it through a pointer, so the C-only tail does not need to be known here.

local ffi = require "ffi"

local ffi_cdef = ffi.cdef
local ffi_typeof = ffi.typeof
local pcall = pcall


local _M = {}


-- A second require in the same state returns the cached module, but a test
-- may reload it with package.loaded cleared: ffi.cdef would then fail with
-- "attempt to redefine", so probe first.
if not pcall(ffi_typeof, "em_batch_view") then
    ffi_cdef [[
        typedef struct em_record {
            uint32_t value_off, value_len;
            uint32_t key_off, key_len;
            int64_t ts_ms;
            int64_t offset;
            int32_t partition;
            uint32_t meta_off, meta_len;
        } em_record;

        typedef struct em_block {
            em_record *records;
            char *arena;
            uint32_t count;
            uint32_t arena_len;
        } em_block;

        typedef struct em_batch_view {
            int64_t time_ms;
            uint32_t nblocks;
            em_block **blocks;
            int32_t *sources;
        } em_batch_view;
    ]]
end


_M.NO_KEY = 0xFFFFFFFF                          -- EM_NO_KEY
_M.view_ptr_t = ffi_typeof("em_batch_view *")


return _M
