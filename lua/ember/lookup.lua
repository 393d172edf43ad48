-- ember.lookup: stream:lookup_redis{...}, lookups in an external Redis
-- that cannot be a reference table (too big, or written by someone else
-- all the time), a chunk of keys per round trip, never one per record.
--
--   events:map(function(e) return e.ad_id, e end)
--         :lookup_redis { url = "redis://127.0.0.1:6379", command = "HGET",
--                         key = function(ad, e) return "ad_campaign", ad end,
--                         ttl = "10s" }
--         -- (ad, { e, campaign }); (ad, { e }) when Redis has none
--
-- On a stream of (k, v) pairs. key(k, v) returns the arguments of the
-- command after its name (default: k alone); records that give the same
-- arguments share one lookup. The operator is wide: it gathers the batch's
-- records, then asks Redis for the distinct arguments its cache does not
-- hold, `chunk` commands (default 1000) written at once and their replies
-- read back: one pipelined round trip per chunk. Replies are kept for
-- `ttl` (default "10s" of batch time; 0 keeps none), nil replies too, up to
-- `cache_max` entries (default 100000; past it the cache starts again
-- empty). Records come out in the order they came, as the joins' shape:
-- (k, { v, reply }), and (k, { v }) when the reply is nil, unless
-- `inner = true` drops those (as join does).
--
-- A reply that is an error (WRONGTYPE) fails the records that asked for it
-- under the job's on_error; a connection that cannot be had or breaks
-- fails the batch, which the driver runs again, as a sink's failure does.
--
-- The round trip goes through the connection pool of ember.redis
-- (connectors/redis_sink.c): em_redis_call sends the chunk's commands in one
-- write and returns the first reply; called again with an empty command it
-- writes nothing and returns the next reply already on its way, so the
-- chunk costs one round trip and no call of its own.

local ffi = require "ffi"
local redis = require "ember.redis"
local sinks = require "ember.sinks"
local state_ops = require "ember.state_ops"

local C = ffi.C
local ffi_new = ffi.new
local ffi_string = ffi.string
local error = error
local type = type
local tostring = tostring
local tonumber = tonumber
local pairs = pairs
local ipairs = ipairs
local math_floor = math.floor
local pcall = pcall
local str_find = string.find
local tbl_concat = table.concat
local duration_ms = state_ops.duration_ms
local arg_string = redis.arg_string
local describe = sinks.describe


local _M = {}

local OPTIONS = { url = true, command = true, key = true, ttl = true, chunk = true,
                  cache_max = true, inner = true }
local DEFAULT_TTL_MS = 10000
local DEFAULT_CHUNK = 1000
local DEFAULT_CACHE_MAX = 100000
local ERRLEN = 512

-- hiredis reply types (read.h)
local STRING, ARRAY, INTEGER, STATUS, ERROR = 1, 2, 3, 5, 6

local NONE = {}                 -- a nil reply in the cache


local function log(level, msg)
    local ok, ember = pcall(require, "ember")
    if ok and ember.log then
        pcall(ember.log, level, msg)
    end
end


function _M.is_lookup(op)
    return op == "lookup_redis"
end


local callable = require "ember.callable"


function _M.declare(DStream, h)
    DStream.lookup_redis = function(self, opts)
        h.check_self(self, "lookup_redis")
        if type(opts) ~= "table" then
            error("bad argument #1 to 'lookup_redis' (table expected, got " .. type(opts) .. ")", 2)
        end
        for k in pairs(opts) do
            if not OPTIONS[k] then
                error("bad argument #1 to 'lookup_redis' (unknown option '" .. tostring(k)
                      .. "'; known: url, command, key, ttl, chunk, cache_max, inner)", 2)
            end
        end
        local bad = redis.check_url(opts.url)
        if bad then
            error("bad option 'url' to 'lookup_redis' (" .. bad .. ")", 2)
        end
        local cmd = opts.command or "GET"
        if type(cmd) ~= "string" or not str_find(cmd, "^%a[%w_%.|]*$") then
            error("bad option 'command' to 'lookup_redis' (a command name such as \"GET\" or "
                  .. "\"HGET\" expected, got " .. tostring(cmd) .. ")", 2)
        end
        if opts.key ~= nil and not callable(opts.key) then
            error("bad option 'key' to 'lookup_redis' (function(k, v) returning the command's "
                  .. "arguments expected, got " .. type(opts.key) .. ")", 2)
        end
        local ttl = DEFAULT_TTL_MS
        if opts.ttl == 0 or opts.ttl == "0" then
            ttl = 0
        elseif opts.ttl ~= nil then
            ttl = duration_ms(opts.ttl)
            if not ttl then
                error("bad option 'ttl' to 'lookup_redis' (a duration such as \"10s\", 0 for no "
                      .. "cache, expected, got " .. tostring(opts.ttl) .. ")", 2)
            end
        end
        for _, o in ipairs({ "chunk", "cache_max" }) do
            local v = opts[o]
            if v ~= nil and (type(v) ~= "number" or v < 1 or v ~= math_floor(v)) then
                error("bad option '" .. o .. "' to 'lookup_redis' (a positive integer expected, "
                      .. "got " .. tostring(v) .. ")", 2)
            end
        end
        if opts.inner ~= nil and type(opts.inner) ~= "boolean" then
            error("bad option 'inner' to 'lookup_redis' (boolean expected)", 2)
        end
        h.need_pairs(self, "lookup_redis")
        local node = h.new_node(self.job, "lookup_redis", { self }, "pair", h.where(2))
        node.url, node.command, node.key_fn = opts.url, cmd, opts.key
        node.ttl_ms, node.chunk = ttl, opts.chunk or DEFAULT_CHUNK
        node.cache_max, node.inner = opts.cache_max or DEFAULT_CACHE_MAX, opts.inner or false
        return node
    end
end


local len_box = ffi_new("size_t[1]")

local function to_lua(r)
    local t = C.em_redis_reply_type(r)
    if t == STRING or t == STATUS then
        local p = C.em_redis_reply_str(r, len_box)
        return ffi_string(p, len_box[0])
    elseif t == INTEGER then
        return tonumber(C.em_redis_reply_integer(r))
    elseif t == ARRAY then
        local out = {}
        for i = 0, tonumber(C.em_redis_reply_count(r)) - 1 do
            out[i + 1] = to_lua(C.em_redis_reply_elem(r, i))
        end
        return out
    end
    return nil                          -- NIL, or a type Lua has no use for
end


-- The per-batch object the executor drives as a wide operation. fails:
-- the job's failure policy (records whose reply is an error).
function _M.make(node, ctx, fails)
    local url, cmd, key_fn = node.url, node.command, node.key_fn
    local ttl, chunk, cache_max, inner = node.ttl_ms, node.chunk, node.cache_max, node.inner
    local where = node.op .. " at " .. node.where
    local errbuf = ffi_new("char[?]", ERRLEN)
    local box = ffi_new("void *[1]")
    local enc = redis.new_encoder()

    -- cache: argument text -> reply (NONE for nil), and when it expires
    local cache, expires, cached = {}, {}, 0
    local stats = { records = 0, asked = 0, round_trips = 0, hits = 0 }
    node.stats = stats                  -- read by the specs and the log

    local ka, vb, ck, n             -- the batch's records and their cache keys
    local argvs                     -- cache key -> argv, for keys to ask
    local w = {}

    function w.reset()
        ka, vb, ck, n, argvs = {}, {}, {}, 0, {}
    end

    function w.size()
        return n
    end

    local argv = {}
    function w.push(a, b)
        if b == nil then
            error(where .. ": (key, value) pair expected, got the single value "
                  .. describe(a, nil, "one"), 0)
        end
        local m
        if key_fn then
            m = redis.collect(argv, key_fn(a, b))
        else
            local s = arg_string(a)
            m = s and 1 or nil
            argv[1] = s
        end
        if not m or m == 0 then
            error(where .. ": the key function must give the arguments of " .. cmd
                  .. " (strings or numbers), got " .. (m == 0 and "nil" or "another value"), 0)
        end
        local text = m == 1 and argv[1] or tbl_concat(argv, "\0", 1, m)
        n = n + 1
        ka[n], vb[n], ck[n] = a, b, text
        local e = expires[text]
        if not argvs[text] and (e == nil or e <= ctx.time) then
            local copy = { cmd }
            for i = 1, m do
                copy[i + 1] = argv[i]
            end
            argvs[text] = copy
        end
    end

    -- Asks for the keys in list[from..to] in one round trip; fills got.
    -- Returns true, or nil and the I/O error.
    local function ask(c, list, from, to, got, bad)
        enc:reset()
        for i = from, to do
            local a = argvs[list[i]]
            enc:command(a, #a)
        end
        local text = enc:get()
        stats.round_trips = stats.round_trips + 1
        for i = from, to do
            local rc
            if i == from then
                rc = C.em_redis_call(c, text, #text, box, errbuf, ERRLEN)
            else
                rc = C.em_redis_call(c, "", 0, box, errbuf, ERRLEN)
            end
            if rc ~= 0 then
                return nil, ffi_string(errbuf)
            end
            local r = box[0]
            local k = list[i]
            if C.em_redis_reply_type(r) == ERROR then
                bad[k] = ffi_string(C.em_redis_reply_str(r, len_box), len_box[0])
            else
                local ok, v = pcall(to_lua, r)
                got[k] = ok and v or nil
            end
            C.em_redis_reply_free(r)
        end
        stats.asked = stats.asked + (to - from + 1)
        return true
    end

    -- Returns ka, vb, m and, when Redis could not be reached, the error;
    -- or stop = true when on_error says the batch stops.
    function w.finish()
        local list, nl = {}, 0
        for k in pairs(argvs) do
            nl = nl + 1
            list[nl] = k
        end
        local got, bad = {}, {}
        local trips = stats.round_trips
        if nl > 0 then
            local c, err = redis.borrow_raw(url)
            if not c then
                return nil, nil, 0, where .. ": " .. tostring(err)
            end
            for from = 1, nl, chunk do
                local to = from + chunk - 1
                if to > nl then
                    to = nl
                end
                local ok, ierr = ask(c, list, from, to, got, bad)
                if not ok then
                    redis.release_raw(c, true)
                    return nil, nil, 0, where .. ": " .. ierr
                end
            end
            redis.release_raw(c, false)
        end
        local oa, ob, m = {}, {}, 0
        for i = 1, n do
            local k = ck[i]
            local v
            if argvs[k] then
                v = got[k]
            else
                v = cache[k]
                stats.hits = stats.hits + 1
                if v == NONE then
                    v = nil
                end
            end
            local why = bad[k]
            if why then
                local text = describe(ka[i], vb[i], "pair")
                if fails:add(where .. ": " .. cmd .. " failed: " .. why, text) then
                    return nil, nil, 0, nil, true
                end
            elseif v ~= nil then
                m = m + 1
                oa[m], ob[m] = ka[i], { vb[i], v }
            elseif not inner then
                m = m + 1
                oa[m], ob[m] = ka[i], { vb[i] }
            end
        end
        -- the replies join the cache once the records took what it held
        -- (a full cache starts again empty)
        if ttl > 0 then
            if cached + nl > cache_max then
                cache, expires, cached = {}, {}, 0
            end
            local until_ = ctx.time + ttl
            for i = 1, nl do
                local k = list[i]
                if not bad[k] then
                    local v = got[k]
                    if cache[k] == nil then
                        cached = cached + 1
                    end
                    cache[k] = v == nil and NONE or v
                    expires[k] = until_
                end
            end
        end
        stats.records = stats.records + n
        if n > 0 then
            log("debug", where .. ": " .. n .. " record" .. (n == 1 and "" or "s") .. ", "
                         .. nl .. " key" .. (nl == 1 and "" or "s") .. " asked in "
                         .. (stats.round_trips - trips) .. " round trip"
                         .. (stats.round_trips - trips == 1 and "" or "s") .. ", "
                         .. (n - nl) .. " from the batch or the cache")
        end
        return oa, ob, m
    end

    return w
end


return _M
