-- ember.sinks.redis: stream:to_redis{ url = ..., command = fn(record) }.
--
--   readings:to_redis {
--       url = "redis://127.0.0.1:6379",
--       command = function(p) return "HSET", "last:" .. p.device, "pm25", p.pm25 end,
--   }
--
-- command(record) returns one command per record, as name, args... or as
-- a table { name, args... } (strings and numbers), or nil to skip the
-- record. A record of a keyed stream is the pair { k, v }.
--
-- Each chunk the executor hands over (up to 8192 records, while the batch
-- is computed) goes out pipelined on one pooled connection in one round
-- trip, and every reply is read: the first error reply fails the batch,
-- naming the command and the record; a lost connection fails it too, and
-- the connection is closed instead of pooled. Commands before and after a
-- failed one did run (a pipeline is not a transaction), and the driver runs
-- a failed batch again: prefer idempotent commands (SET, HSET, SADD, ZADD)
-- for effectively-once output.

local redis = require "ember.redis"

local type = type
local pairs = pairs
local tostring = tostring
local error = error
local pcall = pcall
local str_format = string.format
local collect = redis.collect


local _M = {}

local OPTIONS = { url = true, command = true }


local callable = require "ember.callable"


-- The command for one record, collected into argv: argc, or nil and why.
local function command_of(argv, command, record)
    return collect(argv, command(record))
end


-- Builds the write function (called per chunk); nil, err on bad options.
function _M.to_redis(opts)
    for k in pairs(opts) do
        if not OPTIONS[k] then
            return nil, "unknown option '" .. tostring(k) .. "' (known: url, command)"
        end
    end
    local url, command = opts.url, opts.command
    if url == nil then
        return nil, "option 'url' is required (redis://[:password@]host[:port][/db])"
    end
    local bad = redis.check_url(url)
    if bad then
        return nil, "option 'url': " .. bad
    end
    if not callable(command) then
        return nil, "option 'command' must be a function(record) returning a command, got "
                    .. type(command)
    end

    local enc = redis.new_encoder()
    local argv, index = {}, {}
    local state = {}                    -- conn and name while a chunk is written

    local reject                        -- info.reject of the chunk being written
    local base = 0                      -- records of the batch before this chunk

    -- Encodes the commands of records[1..n]; returns their count.
    -- index[j] = the record of the j-th command.
    local function encode(records, n)
        enc:reset()
        local m = 0
        for i = 1, n do
            local ok, argc, why = pcall(command_of, argv, command, records[i])
            if not ok or not argc then
                -- The user's record, not the server: on_error decides.
                local msg = ok and str_format("the command for record %d %s (strings and "
                                              .. "numbers expected)", base + i, why)
                            or str_format("the command function failed on record %d: %s",
                                          base + i, tostring(argc))
                if not reject or reject(i, msg) then
                    error("to_redis: " .. msg, 0)
                end
                argc = 0
            end
            if argc > 0 then
                enc:command(argv, argc)
                m = m + 1
                index[m] = i
            end
        end
        return m
    end

    -- One round trip: the chunk's commands pipelined, every reply read.
    local function send(records, n)
        local m = encode(records, n)
        if m == 0 then
            return true
        end
        local c, err = redis.borrow_raw(url)
        if not c then
            return nil, "to_redis: " .. err
        end
        state.conn, state.name = c, redis.conn_name(c)
        local ptr, len
        if enc.ref then
            ptr, len = enc:ref()
        else
            ptr = enc:get()
            len = #ptr
        end
        local ok, kind, a, b = redis.pipeline(c, ptr, len, m)
        if ok then
            return true
        elseif kind == "io" then
            state.broken = true
            return nil, "to_redis " .. a
        end
        local rec = index[a]
        local argc = collect(argv, command(records[rec]))
        return nil, str_format("to_redis %s: %s (record %d of the batch) failed: %s",
                               state.name, redis.describe(argv, argc), base + rec, b)
    end

    return function(records, info)
        reject = info and info.reject
        base = info and info.first and info.first - 1 or 0
        local ok, done, err = pcall(send, records, #records)
        if state.conn then
            redis.release_raw(state.conn, state.broken)
            state.conn, state.broken = nil, nil
        end
        if not ok then
            error(done, 0)              -- the user's command raised
        end
        return done, err
    end
end


return _M
