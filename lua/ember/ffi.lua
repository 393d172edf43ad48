-- ember.ffi: the C structures Lua reads a batch through.
--
-- Mirrors em_record, em_run and the first fields of em_block and
-- em_batch_view in core/block.h (the compact layout is described there):
-- change both together. em_block is declared only up to the fields Lua
-- reads (records, arena, runs, count, arena_len, nruns); Lua only ever
-- reaches it through a pointer, so the C-only tail does not need to be
-- known here.

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
            uint32_t offset_delta;
            int32_t ts_delta;
        } em_record;

        typedef struct em_run {
            int64_t base_offset, base_ts;
            uint32_t first;
            int32_t partition;
            uint32_t meta_off, meta_len;
            uint32_t flags;
            uint32_t reserved;
        } em_run;

        typedef struct em_block {
            em_record *records;
            char *arena;
            em_run *runs;
            uint32_t count;
            uint32_t arena_len;
            uint32_t nruns;
        } em_block;

        typedef struct em_batch_view {
            int64_t time_ms;
            uint32_t nblocks;
            em_block **blocks;
            int32_t *sources;
            uint32_t nassigned;
            int32_t *assigned;
        } em_batch_view;
    ]]
end


_M.NO_KEY = 0xFFFFFFFF                          -- EM_NO_KEY
_M.RUN_KEYS = 1                                 -- EM_RUN_KEYS
_M.RUN_EXTRA = 2                                -- EM_RUN_EXTRA
_M.view_ptr_t = ffi_typeof("em_batch_view *")


return _M
