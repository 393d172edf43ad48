-- ember.records: a source record as a Lua table (format = "record").

local ffi = require "ffi"

local ffi_string = ffi.string
local tonumber = tonumber


local _M = {}


-- What each connector's meta bytes are, as a field of a record table.
local META_FIELD = { kafka = "topic", rabbitmq = "exchange", redis = "id", file = "file" }

-- A source record as a table (format = "record"). Kafka's meta is the
-- topic, then "\0key=value" per header.
local function record_table(r, arena, kind)
    local t = {
        value = ffi_string(arena + r.value_off, r.value_len),
        timestamp = tonumber(r.ts_ms),
        offset = tonumber(r.offset),
    }
    if r.key_off ~= 0xFFFFFFFF then
        t.key = ffi_string(arena + r.key_off, r.key_len)
    end
    if r.partition >= 0 then
        t.partition = r.partition
    end
    if r.meta_len > 0 then
        local meta = ffi_string(arena + r.meta_off, r.meta_len)
        if kind == "kafka" then
            local topic, rest = meta:match("^([^%z]*)(.*)$")
            t.topic = topic
            for k, v in rest:gmatch("%z([^=%z]*)=([^%z]*)") do
                local headers = t.headers or {}
                headers[k] = v
                t.headers = headers
            end
        elseif kind == "redis" and not meta:find("^%d+%-%d+$") then
            t.channel = meta -- pub/sub: the channel; streams: the entry id
        else
            t[META_FIELD[kind] or "meta"] = meta
        end
    end
    return t
end

_M.record_table = record_table


return _M
