-- ember.records: a source record as a Lua table (format = "record").
--
-- A block stores what a run of records shares once (em_run: partition,
-- meta, the bases of offsets and timestamps) and per record its value, its
-- deltas, and in front of the value its key and extra bytes with their
-- lengths (see core/block.h).

local ffi = require "ffi"
local bit = require "bit"

local ffi_string = ffi.string
local ffi_cast = ffi.cast
local band = bit.band
local tonumber = tonumber

local u8_ptr_t = ffi.typeof("const uint8_t *")


local _M = {}

local NO_KEY = 0xFFFFFFFF
local RUN_KEYS, RUN_EXTRA = 1, 2


-- The 32-bit little-endian length word ending at arena + at.
local function len_before(arena, at)
    local p = ffi_cast(u8_ptr_t, arena + at - 4)
    return p[0] + p[1] * 256 + p[2] * 65536 + p[3] * 16777216
end


-- What each connector's meta bytes are, as a field of a record table.
local META_FIELD = { kafka = "topic", rabbitmq = "exchange", redis = "channel", file = "file" }

-- A source record as a table (format = "record"). run is the em_run the
-- record belongs to. Kafka's meta is the topic, then "\0#epoch"; its extra
-- bytes are "\0key=value" per header. A Redis stream entry's id is its
-- extra bytes; a pub/sub channel is its run's meta.
local function record_table(r, run, arena, kind)
    local t = {
        value = ffi_string(arena + r.value_off, r.value_len),
        timestamp = tonumber(run.base_ts) + r.ts_delta,
        offset = tonumber(run.base_offset) + r.offset_delta,
    }
    if run.partition >= 0 then
        t.partition = run.partition
    end
    local flags = run.flags
    local at = r.value_off
    if band(flags, RUN_KEYS) ~= 0 then
        local klen = len_before(arena, at)
        at = at - 4
        if klen ~= NO_KEY then
            at = at - klen
            t.key = ffi_string(arena + at, klen)
        end
    end
    local extra
    if band(flags, RUN_EXTRA) ~= 0 then
        local elen = len_before(arena, at)
        extra = ffi_string(arena + at - 4 - elen, elen)
    end
    if run.meta_len > 0 then
        local meta = ffi_string(arena + run.meta_off, run.meta_len)
        if kind == "kafka" then
            t.topic = meta:match("^[^%z]*")
        else
            t[META_FIELD[kind] or "meta"] = meta
        end
    end
    if extra then
        if kind == "kafka" then
            for k, v in extra:gmatch("%z([^=%z]*)=([^%z]*)") do
                local headers = t.headers or {}
                headers[k] = v
                t.headers = headers
            end
        elseif kind == "redis" then
            t.id = extra
        else
            t.extra = extra
        end
    end
    return t
end

_M.record_table = record_table


return _M
