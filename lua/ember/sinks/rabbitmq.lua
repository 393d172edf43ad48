-- ember.sinks.rabbitmq: stream:to_rabbitmq{...}, publishing every record of
-- a batch as a persistent message, chunk by chunk as the batch is computed,
-- and finishing the batch only once the broker has confirmed each one
-- (publisher confirms).
--
--   stream:to_rabbitmq {
--       url         = "amqp://user:password@host:5672/vhost",   -- required
--       exchange    = "alerts",           -- default "" (the default exchange)
--       routing_key = "pm25" or function(record) return ... end,  -- string
--       body        = function(record) return ... end,   -- default: see below
--       mandatory   = false,   -- true: a message no queue is bound for fails the batch
--       timeout     = "30s",   -- for a pooled connection, then for the confirms
--   }
--
-- The C side (connectors/rabbitmq_sink.c) owns the connections: one pool per URL
-- shared by every job (core/pool.h), channels in confirm mode. Records
-- cross into C one FFI call each; C never calls back into Lua.
--
-- Default body: a string as it is, a number or boolean through tostring, a
-- keyed record {k, v} as its value v. Anything else needs a body function.

local ffi = require "ffi"
local sinks = require "ember.sinks"

local C = ffi.C
local type = type
local tostring = tostring
local pcall = pcall
local pairs = pairs
local error = error
local tonumber = tonumber
local ffi_new = ffi.new
local ffi_string = ffi.string
local str_match = string.match
local str_format = string.format


local _M = {}

local ERR_LEN = 2048
local DEFAULT_TIMEOUT_MS = 30000
local KNOWN = { url = true, exchange = true, routing_key = true, body = true,
                mandatory = true, timeout = true }


-- ffi.cdef twice in one state raises "attempt to redefine": probe first.
if not pcall(ffi.typeof, "em_rabbitmq_batch") then
    ffi.cdef [[
        typedef struct em_rabbitmq_batch em_rabbitmq_batch;
        em_rabbitmq_batch *em_rabbitmq_batch_begin(const char *url, const char *exchange,
                                                   int mandatory, int pool_size,
                                                   int timeout_ms, char *err, size_t errlen);
        int em_rabbitmq_batch_publish(em_rabbitmq_batch *b, const char *rk, size_t rklen,
                                      const char *body, size_t len);
        int em_rabbitmq_batch_finish(em_rabbitmq_batch *b, int abort, char *err,
                                     size_t errlen);
    ]]
end


-- "30s", "500ms", "2m" or a number of seconds (as batch_interval) -> ms.
local function duration_ms(v)
    if type(v) == "number" then
        return v > 0 and v * 1000 or nil
    end
    if type(v) ~= "string" then
        return nil
    end
    local n, unit = str_match(v, "^%s*(%d+%.?%d*)%s*(%a*)%s*$")
    n = tonumber(n)
    if not n or n <= 0 then
        return nil
    end
    local scale = ({ ms = 1, s = 1000, m = 60000, [""] = 1 })[unit]
    return scale and n * scale or nil
end


local function default_body(rec)
    local t = type(rec)
    if t == "string" then
        return rec
    elseif t == "number" or t == "boolean" then
        return tostring(rec)
    elseif t == "table" and rec[2] ~= nil then
        local v = rec[2]
        return type(v) == "string" and v or tostring(v)
    end
    error("to_rabbitmq: a " .. t .. " record needs a body function", 0)
end


-- The routing key and body of one record, or raises.
local function message_of(rec, i, rk_fixed, rk_fn, body_fn)
    local rk = rk_fixed
    if rk_fn then
        rk = rk_fn(rec)
        if type(rk) ~= "string" then
            error(str_format("routing_key function returned a %s for record %d, not a string",
                             type(rk), i), 0)
        end
        if #rk > 255 then
            error(str_format("routing key of record %d is %d bytes (AMQP allows 255)", i, #rk), 0)
        end
    end
    local body = body_fn(rec)
    if type(body) ~= "string" then
        if type(body) ~= "number" then
            error(str_format("body function returned a %s for record %d, not a string",
                             type(body), i), 0)
        end
        body = tostring(body)
    end
    return rk, body
end


-- Publishes records[1..n] into batch b. A record whose routing key or body
-- cannot be made goes to reject (on_error) and is left out; raises when
-- reject says stop. Returns false when C reports the batch failed (the
-- reason comes from em_rabbitmq_batch_finish).
local function publish_all(b, records, n, base, rk_fixed, rk_fn, body_fn, reject)
    for i = 1, n do
        local ok, rk, body = pcall(message_of, records[i], base + i, rk_fixed, rk_fn, body_fn)
        if not ok then
            if not reject or reject(i, tostring(rk)) then
                error(rk, 0)
            end
        elseif C.em_rabbitmq_batch_publish(b, rk, #rk, body, #body) ~= 0 then
            return false
        end
    end
    return true
end


-- Validates opts at load time. Returns { write = fn(records, info),
-- finish = fn() }, each -> true or nil, err; or nil, err for bad options
-- (the job then fails to load).
function _M.to_rabbitmq(opts)
    if type(opts) ~= "table" then
        return nil, "to_rabbitmq: expects a table of options"
    end
    for k in pairs(opts) do
        if not KNOWN[k] then
            return nil, "to_rabbitmq: unknown option '" .. tostring(k)
                        .. "' (known: url, exchange, routing_key, body, mandatory, timeout)"
        end
    end
    local url = opts.url
    if type(url) ~= "string" or not str_match(url, "^amqp://") then
        return nil, "to_rabbitmq: option 'url' must be an amqp://user:password@host:port/vhost "
                    .. "URL"
    end
    local exchange = opts.exchange or ""
    if type(exchange) ~= "string" or #exchange > 255 then
        return nil, "to_rabbitmq: option 'exchange' must be an exchange name (at most 255 bytes)"
    end
    local rk = opts.routing_key
    local rk_fixed, rk_fn = "", nil
    if type(rk) == "function" then
        rk_fn = rk
    elseif type(rk) == "string" then
        if #rk > 255 then
            return nil, "to_rabbitmq: option 'routing_key' is longer than 255 bytes"
        end
        rk_fixed = rk
    elseif rk ~= nil then
        return nil, "to_rabbitmq: option 'routing_key' must be a string or a function(record)"
    end
    if exchange == "" and not rk_fn and rk_fixed == "" then
        return nil, "to_rabbitmq: with the default exchange (no 'exchange'), 'routing_key' "
                    .. "names the queue: set it"
    end
    local body_fn = opts.body or default_body
    local loaded, load_err = require("ember.modules").need("rabbitmq")
    if not loaded then
        return nil, "to_rabbitmq: " .. load_err
    end
    if type(body_fn) ~= "function" then
        return nil, "to_rabbitmq: option 'body' must be a function(record) returning a string"
    end
    if opts.mandatory ~= nil and type(opts.mandatory) ~= "boolean" then
        return nil, "to_rabbitmq: option 'mandatory' must be true or false"
    end
    local mandatory = opts.mandatory and 1 or 0
    local timeout_ms = DEFAULT_TIMEOUT_MS
    if opts.timeout ~= nil then
        timeout_ms = duration_ms(opts.timeout)
        if not timeout_ms then
            return nil, "to_rabbitmq: option 'timeout' must be a duration such as \"30s\" "
                        .. "or a number of seconds"
        end
        timeout_ms = timeout_ms < 1 and 1 or (timeout_ms > 2^31 - 1 and 2^31 - 1 or timeout_ms)
    end

    local errbuf = ffi_new("char[?]", ERR_LEN)   -- one per sink: a job's outputs run one at a time

    -- A batch publishes its chunks on one pooled channel as they come and
    -- waits for the broker's confirms once, in finish.
    local b                             -- the batch being written, or nil

    local function write(records, info)
        local n = #records
        if n == 0 then
            return true
        end
        if not b then
            b = C.em_rabbitmq_batch_begin(url, exchange, mandatory, sinks.pool_size, timeout_ms,
                                              errbuf, ERR_LEN)
            if b == nil then
                b = nil                 -- a NULL cdata is truthy: nil, so the next chunk begins again
                return nil, "to_rabbitmq: " .. ffi_string(errbuf)
            end
        end
        local base = info and info.first and info.first - 1 or 0   -- records before this chunk
        local ok, res = pcall(publish_all, b, records, n, base, rk_fixed, rk_fn, body_fn,
                              info and info.reject)
        if not ok then
            C.em_rabbitmq_batch_finish(b, 1, errbuf, ERR_LEN)   -- abandons the batch
            b = nil
            error(res, 0)                                      -- on_error said stop
        end
        if not res then                 -- C gave up on the batch: finish says why
            C.em_rabbitmq_batch_finish(b, 0, errbuf, ERR_LEN)
            b = nil
            return nil, "to_rabbitmq: " .. ffi_string(errbuf)
        end
        return true
    end

    local function finish()
        if not b then
            return true
        end
        local rc = C.em_rabbitmq_batch_finish(b, 0, errbuf, ERR_LEN)
        b = nil
        if rc ~= 0 then
            return nil, "to_rabbitmq: " .. ffi_string(errbuf)
        end
        return true
    end

    return { write = write, finish = finish }
end

return _M
