-- ember.sinks.kafka: stream:to_kafka{ brokers = ..., topic = ..., key = fn, value = fn }.
--
--   alerts:to_kafka {
--       brokers = "localhost:9092",
--       topic = "alerts",
--       key = function(a) return a.device end,     -- optional; nil: no key
--       value = cjson.encode,                       -- optional
--   }
--
-- Defaults: for a record of a keyed stream (the pair {k, v}) the key is k
-- and the value v; for any other record there is no key and the value is
-- the record. A value or key that is a string goes out as is, a number or
-- boolean as its text, a table as JSON.
--
-- One producer per `brokers` string is shared by every job of the process
-- (connectors/kafka_sink.c, acks=all). Each chunk of a batch is sent as the
-- executor hands it over; finish() returns once every record of the batch
-- has its delivery report, and the first failed delivery fails the batch,
-- which the driver runs again — the records that did land are then
-- written twice (at-least-once). A record whose key or value function
-- raises is set aside by the job's on_error (info.reject).

local ffi = require "ffi"
local sinks = require "ember.sinks"

local type = type
local pairs = pairs
local pcall = pcall
local error = error
local tostring = tostring
local getmetatable = getmetatable
local ffi_new = ffi.new
local ffi_string = ffi.string
local str_find = string.find
local render = sinks.render


local _M = {}

local OPTIONS = { brokers = true, topic = true, key = true, value = true }
local ERR_LEN = 512

pcall(ffi.cdef, [[
    typedef struct em_kafka_delivery em_kafka_delivery;
    em_kafka_delivery *em_kafka_delivery_new(void);
    int em_kafka_send(em_kafka_delivery *d, const char *brokers, const char *topic, uint32_t n,
                      const char *const *keys, const uint32_t *key_lens,
                      const char *const *values, const uint32_t *value_lens);
    int em_kafka_delivery_wait(em_kafka_delivery *d, char *err, size_t errlen);
]])


-- ffi.C when this process is ember, nil outside it (a unit spec); or nil
-- and why the Kafka module would not load.
local function c_kafka()
    local loaded, err = require("ember.modules").need("kafka")
    if not loaded then
        return nil, err
    end
    local ok = pcall(function() return ffi.C.em_kafka_send end)
    return ok and ffi.C or nil
end


local callable = require "ember.callable"


local cjson
local function bytes(v, what, i)
    local t = type(v)
    if t == "string" then
        return v
    elseif t == "number" or t == "boolean" then
        return render(v)
    elseif t == "table" then
        cjson = cjson or require "cjson"
        local ok, s = pcall(cjson.encode, v)
        if ok then
            return s
        end
        error("to_kafka: the " .. what .. " of record " .. i .. " cannot be encoded as JSON: "
              .. tostring(s), 0)
    end
    error("to_kafka: the " .. what .. " of record " .. i .. " is " .. t
          .. " (string, number, boolean or table expected)", 0)
end


-- A record of a keyed stream: the executor hands pairs as {k, v}.
local function is_pair(r, shape)
    if shape then
        return shape == "pair" or (shape == "any" and type(r) == "table" and r[2] ~= nil)
    end
    return type(r) == "table" and getmetatable(r) == nil and r[1] ~= nil and r[2] ~= nil
           and r[3] == nil
end


-- Builds the per-batch write function; nil, err on bad options.
function _M.to_kafka(opts)
    for k in pairs(opts) do
        if not OPTIONS[k] then
            return nil, "unknown option '" .. tostring(k) .. "' (known: brokers, topic, key, value)"
        end
    end
    local brokers, topic, key_fn, value_fn = opts.brokers, opts.topic, opts.key, opts.value
    local _, load_err = c_kafka()
    if load_err then
        return nil, load_err
    end
    if type(brokers) ~= "string" or brokers == "" then
        return nil, "option 'brokers' is required (host:port[,host:port...])"
    end
    if type(topic) ~= "string" or not str_find(topic, "^[%w%._%-]+$") or #topic > 249 then
        return nil, "option 'topic' must be a topic name (letters, digits, '.', '_', '-'), got "
                    .. tostring(topic)
    end
    if key_fn ~= nil and not callable(key_fn) then
        return nil, "option 'key' must be a function(record) returning a string or nil, got "
                    .. type(key_fn)
    end
    if value_fn ~= nil and not callable(value_fn) then
        return nil, "option 'value' must be a function(record) returning a string, got "
                    .. type(value_fn)
    end

    -- Arrays handed to C, grown as batches need and reused (one batch of
    -- a job is written at a time).
    local cap = 0
    local keys, key_lens, values, value_lens
    local err_buf = ffi_new("char[?]", ERR_LEN)
    local anchor = {}   -- the strings C reads in place, reachable until produce returns

    -- The key and value bytes of one record, or raises.
    local function encode(r, i, shape)
        local pair = (key_fn == nil or value_fn == nil) and is_pair(r, shape)
        local k, v
        if key_fn then
            k = key_fn(r)
        elseif pair then
            k = r[1]
        end
        if value_fn then
            v = value_fn(r)
        elseif pair then
            v = r[2]
        else
            v = r
        end
        return k ~= nil and bytes(k, "key", i) or nil, bytes(v, "value", i)
    end

    -- Fills the C arrays with every record that encodes; a record that
    -- does not goes to reject (on_error). Returns the count filled.
    local function fill(records, n, base, shape, reject)
        local j = 0
        for i = 1, n do
            local ok, k, v = pcall(encode, records[i], base + i, shape)
            if ok then
                anchor[2 * j + 1] = v           -- C reads these strings in place
                values[j], value_lens[j] = v, #v
                anchor[2 * j + 2] = k or false
                if k then
                    keys[j], key_lens[j] = k, #k
                else
                    keys[j], key_lens[j] = nil, 0
                end
                j = j + 1
            else
                local why = type(k) == "string" and str_find(k, "^to_kafka: ")
                            and k:sub(11) or ("the key or value function failed on record "
                                              .. base + i .. ": " .. tostring(k))
                if not reject or reject(i, why) then
                    error("to_kafka: " .. why, 0)
                end
            end
        end
        return j
    end

    -- A batch's chunks are sent as they come and their delivery reports
    -- awaited once, in finish: the cluster works while the batch is computed.
    local delivery                      -- of the batch being written

    local function write(records, info)
        local n = #records
        if n == 0 then
            return true
        end
        local C, err = c_kafka()
        if not C then
            return nil, "to_kafka: " .. (err or "em_kafka_send is not in this process (run the job in ember)")
        end
        if n > cap then
            cap = n > 2 * cap and n or 2 * cap
            keys = ffi_new("const char *[?]", cap)
            key_lens = ffi_new("uint32_t[?]", cap)
            values = ffi_new("const char *[?]", cap)
            value_lens = ffi_new("uint32_t[?]", cap)
        end
        local base = info and info.first and info.first - 1 or 0   -- records before this chunk
        local ok, m = pcall(fill, records, n, base, info and info.shape, info and info.reject)
        if not ok then
            anchor = {}
            error(m, 0)
        end
        if m > 0 then
            if not delivery then
                delivery = C.em_kafka_delivery_new()
                if delivery == nil then
                    anchor = {}
                    return nil, "to_kafka " .. topic .. ": out of memory"
                end
            end
            -- librdkafka copies the bytes (F_COPY): the strings may go after this
            C.em_kafka_send(delivery, brokers, topic, m, keys, key_lens, values, value_lens)
        end
        anchor = {}
        return true
    end

    local function finish()
        local d = delivery
        if not d then
            return true
        end
        delivery = nil
        if ffi.C.em_kafka_delivery_wait(d, err_buf, ERR_LEN) ~= 0 then
            return nil, "to_kafka " .. topic .. ": kafka sink " .. brokers .. ": "
                        .. ffi_string(err_buf)
        end
        return true
    end

    return { write = write, finish = finish }
end

return _M
