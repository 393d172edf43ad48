-- ember.table: reference tables, job:table { from = ..., key = fn, value = fn }.
--
--   local ads = job:table { from = { redis = url, hash = "ad_campaign" } }
--   events:map(function(e) return e.ad_id, e end):join(ads)
--
-- A table is a Lua table in the job's state, filled from its source and
-- read in process by stream:join(table) and stream:left_outer_join(table)
-- (ember.table_ops): no network call per record. The executor calls
-- _M.before_batch(job, time) before each batch runs:
--   - a table never loaded is loaded now; when its source cannot be read,
--     the batch fails before any record is pushed (a warning naming the
--     table and its source) and the driver retries it with backoff: the job
--     waits for the first load, and no batch runs against an empty table;
--   - a loaded table whose `refresh` interval (default 1s) has passed since
--     it was last read is read again, whole, and replaces the old contents
--     between two batches: what changed or went (a nil value deletes) takes
--     effect for the records of the batches after it. A source that cannot
--     be read then keeps the last contents and warns once per outage.
--
-- Sources (from = ...), each read whole (docs/tables.md):
--   { redis = url, hash = "name" }      HGETALL: (field, value) per entry
--   { redis = url, pattern = "ad:*" }   SCAN MATCH + MGET: (key, value) per
--                                       string key (other types are skipped)
--   { file = path [, format = "lines" | "json"] [, separator = "\t"] }
--       "lines": field<separator>value per line; "json": one JSON object
--   { kafka = brokers, topic = "name" [, config = { ... }] }
--       a compacted topic, read to its end, then followed record by record
--       (ember.table_kafka): each batch takes what came since the last;
--       every refresh (at least 5 s) it looks for new partitions
--
-- key(field, value) and value(field, value) make the table's entry (both
-- default to the field and the value). A key or value function that raises
-- skips that entry with a warning naming it; a nil key or a nil value
-- leaves the entry out (deleted when it was there).
--
-- Tables are not checkpointed: a new Lua state (a start, a restart after a
-- crash, a reload) loads them again from their source, the one place that
-- holds them; see docs/tables.md for why.

local ffi = require "ffi"
local redis = require "ember.redis"
local json = require "ember.json"
local state_ops = require "ember.state_ops"
local table_kafka = require "ember.table_kafka"

local C = ffi.C
local ffi_new = ffi.new
local ffi_string = ffi.string
local error = error
local type = type
local tostring = tostring
local tonumber = tonumber
local pairs = pairs
local next = next
local ipairs = ipairs
local pcall = pcall
local setmetatable = setmetatable
local getmetatable = getmetatable
local io_open = io.open
local os_time = os.time
local str_find = string.find
local str_sub = string.sub
local str_gmatch = string.gmatch
local duration_ms = state_ops.duration_ms


local _M = {}

local Table = {}
Table.__index = Table
_M.Table = Table

local DEFAULT_REFRESH_MS = 1000
local SCAN_COUNT = 1000
local ERRLEN = 512
local OPTIONS = { from = true, key = true, value = true, refresh = true, name = true }

-- hiredis reply types (read.h)
local STRING, ARRAY, STATUS, ERROR = 1, 2, 5, 6


function _M.is_table(v)
    return getmetatable(v) == Table
end


local callable = require "ember.callable"


-- Redis ------------------------------------------------------------------

local errbuf = ffi_new("char[?]", ERRLEN)
local len_box = ffi_new("size_t[1]")
local reply_box = ffi_new("void *[1]")
local argv = {}
local enc

-- Sends one command on the borrowed connection c: the reply (to free with
-- em_redis_reply_free), or nil and why (the connection is then broken).
local function call(c, ...)
    local n = redis.collect(argv, ...)
    enc = enc or redis.new_encoder()
    enc:reset()
    enc:command(argv, n)
    local text = enc:get()
    if C.em_redis_call(c, text, #text, reply_box, errbuf, ERRLEN) ~= 0 then
        return nil, ffi_string(errbuf), true
    end
    local r = reply_box[0]
    if C.em_redis_reply_type(r) == ERROR then
        local msg = ffi_string(C.em_redis_reply_str(r, len_box), len_box[0])
        C.em_redis_reply_free(r)
        return nil, argv[1] .. ": " .. msg
    end
    return r
end

local function str_of(r)
    local t = C.em_redis_reply_type(r)
    if t == STRING or t == STATUS then
        local p = C.em_redis_reply_str(r, len_box)
        return ffi_string(p, len_box[0])
    end
    return nil
end

local function elem(r, i)
    return C.em_redis_reply_elem(r, i)
end

local function count(r)
    if C.em_redis_reply_type(r) ~= ARRAY then
        return 0
    end
    return tonumber(C.em_redis_reply_count(r))
end


-- Runs read(c) on a connection borrowed from the pool of url; the
-- connection goes back (broken when read failed on I/O).
local function with_conn(url, read)
    local c, err = redis.borrow_raw(url)
    if not c then
        return nil, err
    end
    local ok, fields, values, n_or_err, broken = pcall(read, c)
    redis.release_raw(c, not ok or broken)
    if not ok then
        return nil, tostring(fields)
    end
    if not fields then
        return nil, n_or_err
    end
    return fields, values, n_or_err
end


local function read_hash(src)
    return with_conn(src.redis, function(c)
        local r, err, broken = call(c, "HGETALL", src.hash)
        if not r then
            return nil, nil, err, broken
        end
        local fields, values, n = {}, {}, 0
        for i = 0, count(r) - 2, 2 do
            n = n + 1
            fields[n], values[n] = str_of(elem(r, i)), str_of(elem(r, i + 1))
        end
        C.em_redis_reply_free(r)
        return fields, values, n
    end)
end


-- SCAN the keyspace for the pattern, a page at a time, and MGET each page:
-- two round trips per SCAN_COUNT keys looked at.
local function read_pattern(src)
    return with_conn(src.redis, function(c)
        local fields, values, n = {}, {}, 0
        local seen = {}
        local cursor = "0"
        repeat
            local r, err, broken = call(c, "SCAN", cursor, "MATCH", src.pattern, "COUNT", SCAN_COUNT)
            if not r then
                return nil, nil, err, broken
            end
            cursor = str_of(elem(r, 0)) or "0"
            local keys = elem(r, 1)
            local page, m = { "MGET" }, 1
            for i = 0, count(keys) - 1 do
                local k = str_of(elem(keys, i))
                if k and not seen[k] then       -- SCAN may return a key twice
                    seen[k] = true
                    m = m + 1
                    page[m] = k
                end
            end
            C.em_redis_reply_free(r)
            if m > 1 then
                local g, err2, broken2 = call(c, page)
                if not g then
                    return nil, nil, err2, broken2
                end
                for i = 0, m - 2 do
                    local v = str_of(elem(g, i))
                    if v ~= nil then            -- nil: not a string, or gone since SCAN
                        n = n + 1
                        fields[n], values[n] = page[i + 2], v
                    end
                end
                C.em_redis_reply_free(g)
            end
        until cursor == "0"
        return fields, values, n
    end)
end


-- Files ------------------------------------------------------------------

-- Reads the file; returns "same" when its content did not change since the
-- last read (nothing to do), else the entries.
local function read_file(src, tbl)
    local f, err = io_open(src.file, "rb")
    if not f then
        return nil, err
    end
    local text = f:read("*a")
    f:close()
    if text == nil then
        return nil, src.file .. ": cannot read"
    end
    if text == src.last_text then
        return "same"
    end
    local fields, values, n = {}, {}, 0
    if src.format == "json" then
        local obj = json.decode(text)
        if type(obj) ~= "table" or obj[1] ~= nil then
            return nil, src.file .. ": a JSON object expected"
        end
        for k, v in pairs(obj) do
            n = n + 1
            fields[n], values[n] = k, (v ~= json.null) and v or nil
        end
    else
        local sep, line_no = src.separator, 0
        for line in str_gmatch(text, "([^\n]*)\n?") do
            line_no = line_no + 1
            if str_sub(line, -1) == "\r" then
                line = str_sub(line, 1, -2)
            end
            if line ~= "" then
                local at = str_find(line, sep, 1, true)
                if at then
                    n = n + 1
                    fields[n], values[n] = str_sub(line, 1, at - 1), str_sub(line, at + #sep)
                else
                    tbl:warn(src.file .. ":" .. line_no .. ": no separator "
                             .. (sep == "\t" and "(a tab)" or ("'" .. sep .. "'"))
                             .. " in the line; skipped")
                end
            end
        end
    end
    src.last_text = text
    return fields, values, n
end


-- Declaration --------------------------------------------------------------

-- Checks `from` and returns the source: { kind =, read =, what = }.
local function source_of(from, level)
    if type(from) ~= "table" then
        error("bad option 'from' to 'table' (a source such as { redis = url, hash = \"name\" }, "
              .. "{ redis = url, pattern = \"ad:*\" }, { file = path } or { kafka = brokers, "
              .. "topic = \"name\" } expected, got " .. type(from) .. ")", level)
    end
    local src = {}
    for k, v in pairs(from) do
        src[k] = v
    end
    if from.redis ~= nil then
        local bad = redis.check_url(from.redis)
        if bad then
            error("bad option 'from.redis' to 'table' (" .. bad .. ")", level)
        end
        for k in pairs(from) do         -- first: a misspelt 'hash' is named as such
            if k ~= "redis" and k ~= "hash" and k ~= "pattern" then
                error("bad option 'from." .. tostring(k) .. "' to 'table' (a Redis source "
                      .. "takes redis, hash or pattern)", level)
            end
        end
        local h, p = from.hash, from.pattern
        if (h == nil) == (p == nil) then
            error("bad option 'from' to 'table' (a Redis source takes one of 'hash' or "
                  .. "'pattern')", level)
        end
        if (h ~= nil and (type(h) ~= "string" or h == ""))
                or (p ~= nil and (type(p) ~= "string" or p == "")) then
            error("bad option 'from." .. (h and "hash" or "pattern") .. "' to 'table' "
                  .. "(a non-empty string expected)", level)
        end
        src.kind = h and "redis_hash" or "redis_pattern"
        src.read = h and read_hash or read_pattern
        -- the URL without its password
        local shown = str_sub(from.redis, 1, 8) == "redis://" and from.redis:gsub("//[^@/]*@", "//")
                      or from.redis
        src.what = (h and ("Redis hash '" .. h .. "'") or ("Redis keys '" .. p .. "'"))
                   .. " at " .. shown
    elseif from.file ~= nil then
        if type(from.file) ~= "string" or from.file == "" then
            error("bad option 'from.file' to 'table' (a path expected)", level)
        end
        for k in pairs(from) do
            if k ~= "file" and k ~= "format" and k ~= "separator" then
                error("bad option 'from." .. tostring(k) .. "' to 'table' (a file source "
                      .. "takes file, format or separator)", level)
            end
        end
        local fmt = from.format or "lines"
        if fmt ~= "lines" and fmt ~= "json" then
            error("bad option 'from.format' to 'table' (\"lines\" or \"json\" expected, got "
                  .. tostring(fmt) .. ")", level)
        end
        local sep = from.separator or "\t"
        if type(sep) ~= "string" or sep == "" then
            error("bad option 'from.separator' to 'table' (a non-empty string expected)", level)
        end
        src.kind, src.format, src.separator = "file", fmt, sep
        src.read = read_file
        src.what = "file " .. from.file
    elseif from.kafka ~= nil or from.topic ~= nil then
        local bad = table_kafka.check(from)
        if bad then
            error("bad option 'from' to 'table' (" .. bad .. ")", level)
        end
        src.kind = "kafka"
        src.follow = table_kafka.follow
        src.what = "Kafka topic '" .. from.topic .. "' at " .. from.kafka
    else
        local k = next(from)
        error("bad option 'from' to 'table' (one of 'redis', 'file' or 'kafka' expected"
              .. (k ~= nil and (", got '" .. tostring(k) .. "'") or ", got an empty table")
              .. ")", level)
    end
    return src
end


-- job:table{...} (installed on ember.job's Job by _M.declare).
local function declare_table(job, opts, where)
    local level = 3
    if type(opts) ~= "table" then
        error("bad argument #1 to 'table' (table expected, got " .. type(opts) .. ")", level)
    end
    if job.sealed then
        error("cannot add a table to job '" .. tostring(job.name) .. "' once it is loaded", level)
    end
    for k in pairs(opts) do
        if not OPTIONS[k] then
            error("bad argument #1 to 'table' (unknown option '" .. tostring(k)
                  .. "'; known: from, key, value, refresh, name)", level)
        end
    end
    local src = source_of(opts.from, level + 1)
    for _, o in ipairs({ "key", "value" }) do
        if opts[o] ~= nil and not callable(opts[o]) then
            error("bad option '" .. o .. "' to 'table' (function(field, value) expected, got "
                  .. type(opts[o]) .. ")", level)
        end
    end
    local refresh = DEFAULT_REFRESH_MS
    if opts.refresh ~= nil then
        refresh = duration_ms(opts.refresh)
        if not refresh then
            error("bad option 'refresh' to 'table' (a duration such as \"1s\" or \"500ms\" "
                  .. "expected, got " .. tostring(opts.refresh) .. ")", level)
        end
    end
    if opts.name ~= nil and (type(opts.name) ~= "string" or opts.name == "") then
        error("bad option 'name' to 'table' (a non-empty string expected)", level)
    end
    local tables = job.tables
    if not tables then
        tables = {}
        job.tables = tables
    end
    local name = opts.name or ("table " .. (#tables + 1))
    for _, other in ipairs(tables) do    -- the name labels its metrics: one per job
        if other.name == name then
            error("bad option 'name' to 'table' (job '" .. tostring(job.name) .. "' has a table '"
                  .. name .. "' already, declared at " .. other.where .. ")", level)
        end
    end
    local tbl = setmetatable({
        job = job,
        id = #tables + 1,
        name = name,
        where = where,
        source = src,
        key_fn = opts.key,
        value_fn = opts.value,
        refresh_ms = refresh,
        data = {},              -- key -> value: what joins read
        size = 0,
        loaded = false,
        last_read = nil,        -- batch time of the last read attempt that worked
        failing = false,        -- a warning for this outage was logged
        loads = 0,              -- reads that changed or confirmed the contents
        -- what the driver shows (_M.status): reads of the source that
        -- failed, the last one's error, the wall-clock time of the last
        -- read that worked, and whether the last read failed (stale)
        load_errors = 0,
        last_error = nil,
        last_load_ms = nil,
        stale = false,
    }, Table)
    tables[#tables + 1] = tbl
    return tbl
end


function _M.declare(Job, where_fn)
    Job.table = function(self, opts)
        if type(self) ~= "table" or getmetatable(self) ~= Job then
            error("calling 'table' on bad self (job expected; use job:table{...})", 2)
        end
        local tbl = declare_table(self, opts, where_fn(2))  -- not a tail call: error levels
        return tbl
    end
end


-- Loading ------------------------------------------------------------------

-- Wall-clock ms: the driver's clock when it is there (it is, in the
-- driver), else os.time's seconds (plain LuaJIT, the unit specs).
local clock_ms
local function now_ms()
    if clock_ms == nil then
        pcall(ffi.cdef, "int64_t em_clock_now_ms(void);")   -- fails when declared already
        clock_ms = pcall(function() return C.em_clock_now_ms end) and function() return tonumber(C.em_clock_now_ms()) end
                   or function() return os_time() * 1000 end
    end
    return clock_ms()
end

local function log(level, msg)
    local ok, ember = pcall(require, "ember")
    if ok and ember.log then
        pcall(ember.log, level, msg)
    end
end

function Table:describe()
    return "table '" .. self.name .. "' (" .. self.where .. ", " .. self.source.what .. ")"
end

function Table:warn(msg)
    log("warn", self:describe() .. ": " .. msg)
end

function Table:info(msg)
    log("info", self:describe() .. ": " .. msg)
end

-- A read of the source that failed: counted, and the table is stale (it
-- keeps what it held, or, never loaded, the job waits).
function Table:failed(err)
    self.load_errors = self.load_errors + 1
    self.last_error = tostring(err)
    self.stale = true
end


-- Builds the contents from a source's entries through key and value.
function Table:build(fields, values, n)
    local kf, vf = self.key_fn, self.value_fn
    local data, size = {}, 0
    local skipped, first_why = 0, nil
    for i = 1, n do
        local f, v = fields[i], values[i]
        local k, val = f, v
        local ok, err = true, nil
        if kf then
            ok, k = pcall(kf, f, v)
            err = k
        end
        if ok and vf then
            ok, val = pcall(vf, f, v)
            err = val
        end
        if not ok then
            skipped = skipped + 1
            first_why = first_why or ("'" .. tostring(f) .. "': " .. tostring(err))
        elseif k ~= nil and val ~= nil then
            if data[k] == nil then
                size = size + 1
            end
            data[k] = val
        end
    end
    -- One line per read that skips a different number of entries than the
    -- last, so a bad entry does not log at every refresh.
    if skipped ~= (self.skipped or 0) and skipped > 0 then
        self:warn(skipped .. " entr" .. (skipped == 1 and "y" or "ies") .. " skipped, their key "
                  .. "or value function raised; the first, " .. first_why)
    end
    self.skipped = skipped
    return data, size
end


-- A source followed record by record (a Kafka topic): its follow step
-- updates the contents in place.
function Table:follow(time)
    local src = self.source
    local ok, how, pending = src.follow(src, self, now_ms())
    if not ok and pending then
        -- reading, not failing: the first load is not done yet
        self.stale = false
        self.last_load_ms = now_ms()
        return nil, self:describe() .. " is not loaded yet (" .. tostring(how)
                    .. "); the job waits for its first load"
    end
    if not ok then
        self:failed(how)
        if not self.loaded then
            return nil, self:describe() .. " is not loaded yet (" .. tostring(how)
                        .. "); the job waits for its first load"
        end
        if not self.failing then
            self.failing = true
            self:warn("cannot read its source (" .. tostring(how) .. "); joins keep using the "
                      .. self.size .. " entries read so far")
        end
        return true
    end
    if self.failing then
        self.failing = false
        log("info", self:describe() .. ": its source can be read again")
    end
    self.last_read = time
    self.stale = false
    self.last_load_ms = now_ms()
    if how == "loaded" then
        self.loaded = true
        log("info", self:describe() .. ": loaded, " .. self.size .. " entries")
    elseif (self.set or 0) > 0 or (self.deleted or 0) > 0 then
        log("debug", self:describe() .. ": followed, " .. self.size .. " entries ("
                     .. self.set .. " set, " .. self.deleted .. " deleted)")
    end
    return true
end


-- Reads the source once; true when the table holds what the source holds.
function Table:load(time)
    local src = self.source
    if src.follow then
        return self:follow(time)
    end
    local fields, values, n = src.read(src, self)
    if fields == "same" then
        self.last_read = time
        self.stale = false
        self.last_load_ms = now_ms()
        return true
    end
    if not fields then
        local err = values
        self:failed(err)
        if not self.loaded then
            -- the batch waits: the driver retries it
            return nil, self:describe() .. " is not loaded yet and its source cannot be read ("
                        .. tostring(err) .. "); the job waits for its first load"
        end
        if not self.failing then
            self.failing = true
            self:warn("cannot read its source (" .. tostring(err) .. "); joins keep using the "
                      .. self.size .. " entries last read")
        end
        self.last_read = time
        return true
    end
    local data, size = self:build(fields, values, n)
    if self.failing then
        self.failing = false
        log("info", self:describe() .. ": its source can be read again")
    end
    local first = not self.loaded
    local old = self.data
    self.data, self.size, self.loaded = data, size, true
    self.last_read = time
    self.loads = self.loads + 1
    self.stale = false
    self.last_load_ms = now_ms()
    if first then
        log("info", self:describe() .. ": loaded, " .. size .. " entries")
    else
        -- what changed, for the log (a read that changed nothing says nothing)
        local set, gone = 0, 0
        for k, v in pairs(data) do
            if old[k] ~= v then
                set = set + 1
            end
        end
        for k in pairs(old) do
            if data[k] == nil then
                gone = gone + 1
            end
        end
        if set > 0 or gone > 0 then
            log("debug", self:describe() .. ": read again, " .. size .. " entries ("
                         .. set .. " set, " .. gone .. " deleted)")
        end
    end
    return true
end


-- The entry of key k, or nil (for job code: map functions, foreach_batch).
function Table:get(k)
    return self.data[k]
end

function Table:count()
    return self.size
end


-- What the driver shows of each table of the job (the HTTP API, /metrics):
-- read by the worker after each batch, on the thread that owns the state.
function _M.status(job)
    local out = {}
    for i, t in ipairs(job.tables or {}) do
        out[i] = { name = t.name, kind = t.source.kind, source = t.source.what, where = t.where,
                   loaded = t.loaded, entries = t.size, last_load_ms = t.last_load_ms or 0,
                   load_errors = t.load_errors, last_error = t.last_error, stale = t.stale }
    end
    return out
end

-- What `ember check` prints: each table's name, source and declaration.
function _M.describe_all(job)
    local out = {}
    for i, t in ipairs(job.tables or {}) do
        out[i] = { name = t.name, kind = t.source.kind, source = t.source.what, where = t.where }
    end
    return out
end


-- Before each batch: loads tables never loaded, refreshes those due.
-- Returns true, or nil and why the batch cannot run yet.
function _M.before_batch(job, time)
    local tables = job.tables
    if not tables then
        return true
    end
    for i = 1, #tables do
        local t = tables[i]
        if not t.loaded or t.last_read == nil or t.source.follow
                or time - t.last_read >= t.refresh_ms then
            local ok, err = t:load(time)
            if not ok then
                if not t.waiting then       -- once; the driver logs each retry
                    t.waiting = true
                    log("warn", err)
                end
                return nil, err
            end
            t.waiting = nil
        end
    end
    return true
end


return _M
