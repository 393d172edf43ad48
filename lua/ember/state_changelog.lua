-- ember.state_changelog: a job's keyed state kept in a compacted Kafka
-- topic, per input partition, instead of local files (docs/scaling.md,
-- "State that follows its partitions"). The Kafka side is C
-- (connectors/kafka_changelog*.c); this is the store's side:
--
--   attach(job, store)  at load: decides whether the job keeps its state in
--                       a changelog, and names the topic on the Kafka source
--   wrap(node, push)    the push of a stateful operator: notes the Kafka
--                       partition of each key's records
--   prepare(batch_id)   instead of the store's: hands the staged keys, by
--                       partition, to C, which writes them at the commit
--   sync()              before a batch: the loads and drops of partitions
--                       the rebalances queued, applied to committed state
--   reload()            a reloaded job's new version, before its first
--                       batch: the state of the partitions this member owns,
--                       read again (queued as loads for sync)
--   check_migrate()     a reload's dry run: migrate on the owned partitions'
--                       state of another state_version, as the changelog has it
--
-- Versions. Each marker names the job's state_version. A partition loaded
-- with state of another version is migrated with the job's migrate (run per
-- partition, on that partition's keys) or, without one, set aside in a local
-- archive and dropped; either way every key the partition held, and every
-- key migrate returned, is written again at the next commit (its new value,
-- or a tombstone), followed by a marker of the new version. So the changelog
-- never gives the old state to the new version: the next owner reads the
-- migrated values (or nothing) after the old ones.
--
-- The rule (docs/scaling.md): a key's state lives with the partition its
-- records come from. A record whose key has state from another partition
-- is an error of that record.
--
-- Event-time windows (ember.event_window) note their state keys' partitions
-- in op.part themselves, and the event-time clock (ember.event_time) keeps
-- one watermark per partition, in that partition: a load or a drop marks
-- an operator's index stale (op.reindex) for the windows to rebuild it.

local ffi = require "ffi"
local buffer = require "string.buffer"
local format = require "ember.state_format"
local state_mod = require "ember.state"
local files = require "ember.state_files"
local narrow = require "ember.narrow"
local ember = require "ember"

local C = ffi.C
local ffi_string = ffi.string
local ffi_new = ffi.new
local ffi_cast = ffi.cast
local encode = buffer.encode
local decode = buffer.decode
local pairs = pairs
local ipairs = ipairs
local type = type
local tostring = tostring
local tonumber = tonumber
local error = error
local pcall = pcall
local next = next
local os_time = os.time
local io_open = io.open
local REMOVED = format.REMOVED
local new_map = format.new_map

local _M = {}

if not pcall(function() return C.em_changelog_find end) then
    ffi.cdef [[
        typedef struct em_changelog em_changelog;
        em_changelog *em_changelog_find(const char *job);
        void em_changelog_begin(em_changelog *cl);
        int em_changelog_put(em_changelog *cl, int32_t partition, const char *k, size_t klen,
                             const char *v, size_t vlen);
        int em_changelog_take(em_changelog *cl, int32_t *partition, const char **data,
                              size_t *len);
        void em_changelog_taken(em_changelog *cl);
        int64_t em_clock_mono_ms(void);
    ]]
end
if not pcall(function() return C.em_changelog_reload end) then
    ffi.cdef [[
        int em_changelog_reload(em_changelog *cl);
        void em_changelog_set_version(em_changelog *cl, const char *version);
        int em_changelog_owned(em_changelog *cl, int32_t *out, int max);
        int em_changelog_peek(em_changelog *cl, int32_t partition, char **data, size_t *len,
                              char *err, size_t errlen);
        void em_changelog_free(char *data);
    ]]
end

-- The kinds of stateful operator whose state key is the record's key.
local KEYED = { update_state_by_key = true, map_with_state = true }
-- The kinds a changelog carries: those, event-time windows (a state key
-- per key and window, its partition noted by ember.event_window) and the
-- event-time clock (an entry per partition, ember.event_time).
local CARRIED = { update_state_by_key = true, map_with_state = true, event_window = true,
                  event_time = true }
-- The kinds whose records must come straight from their partition.
local FED = { update_state_by_key = true, map_with_state = true, event_window = true }


local function show(k)
    return type(k) == "string" and ('"' .. k .. '"') or tostring(k)
end


-- About what a key and its value take (ember.state's measure).
local function size_of(x)
    local t = type(x)
    if t == "string" then
        return #x + 2
    elseif t == "number" then
        return 9
    elseif t == "table" then
        return #x[1] + 2
    end
    return 1
end


-- Whether every operation between a source and node is narrow (the record
-- in hand when node's push runs is the one the pair came from).
local function narrow_path(node)
    for _, p in ipairs(node.parents or {}) do
        if not p.source then
            if not (narrow.ops[p.op] or p.op == "union" or p.op == "event_time")
           or not narrow_path(p) then
                return false, p.op
            end
        end
    end
    return true
end


-- Removes key k of op from committed state.
local function remove_key(op, k)
    local old = op.committed[k]
    if old ~= nil then
        op.committed[k] = nil
        op.nkeys = op.nkeys - 1
        op.bytes = op.bytes - size_of(k) - size_of(old)
    end
    local times = op.times
    if times and times[k] then
        local b = op.buckets[times[k]]
        if b then
            b[k] = nil
        end
        times[k] = nil
    end
end


local function set_key(op, k, s, t)
    local old = op.committed[k]
    if old == nil then
        op.nkeys = op.nkeys + 1
    else
        op.bytes = op.bytes - size_of(k) - size_of(old)
    end
    op.committed[k] = s
    op.bytes = op.bytes + size_of(k) + size_of(s)
    local times = op.times
    if times and t then
        local prev = times[k]
        if prev and op.buckets[prev] then
            op.buckets[prev][k] = nil
        end
        times[k] = t
        local b = op.buckets[t]
        if not b then
            b = new_map()
            op.buckets[t] = b
        end
        b[k] = true
    end
end


-- Decides at load time. Returns the changelog object (also store.changelog)
-- or nil: the job keeps local state files. Raises for a job that asks for a
-- changelog it cannot have.
function _M.attach(job, store, host)
    local src
    for _, s in ipairs(job.sources) do
        local want = s.type == "kafka" and s.options and s.options.changelog
        if want ~= nil and want ~= false and want ~= "false" then
            src = s
        end
    end
    if not src then
        return nil                              -- opt-in: the job says its keys follow partitions
    end
    local opts = src.options
    local want = opts.changelog
    local function refuse(why)
        error("job '" .. job.name .. "' (" .. tostring(src.where) .. "): changelog = "
              .. tostring(want) .. ": " .. why .. " (changelog = false: local state files)", 0)
    end
    if want ~= true and want ~= "true" and (type(want) ~= "string" or want == "") then
        refuse("true, false or a topic name expected")
    end
    if not store:is_stateful() then
        refuse("the job keeps no keyed state")
    end
    if #job.sources ~= 1 then
        refuse("the Kafka source must be the job's only source")
    end
    if not opts.group then
        refuse("the kafka source needs its group")
    end
    local why
    for _, op in ipairs(store.order) do
        if not CARRIED[op.kind] then
            why = why or (op.kind .. " '" .. op.name .. "' (" .. op.where .. ") keeps state the "
                          .. "changelog does not carry yet")
        end
    end
    for _, node in ipairs(job.nodes or {}) do
        if node.state_name and FED[node.op] then
            local ok, bad = narrow_path(node)
            if not ok then
                why = why or (node.op .. " '" .. node.state_name .. "' (" .. node.where .. ") is fed "
                              .. "by '" .. tostring(bad) .. "'; a key's records must reach it "
                              .. "straight from their partition (map, filter, flat_map)")
            end
        end
    end
    if why then
        refuse(why)
    end
    local topic = (want ~= true and want ~= "true") and want
                  or (tostring(opts.group) .. "-" .. job.name .. "-changelog")
    local copy = {}
    for k, v in pairs(opts) do
        copy[k] = v
    end
    copy.changelog = topic
    src.options = copy
    for _, op in ipairs(store.order) do
        op.part = new_map()                     -- key -> Kafka partition of its records
    end

    local cl = { topic = topic }
    local my_version = job.state_version == nil and "" or tostring(job.state_version)
    -- partition -> { keys = { {raw = encoded key, op = op or nil, k = key} }, sent }:
    -- the keys a change of state_version rewrites at the next commit
    local rewrite = {}
    local handle = nil
    local jobname = job.name
    local pp = ffi_new("int32_t[1]")
    local dp = ffi_new("const char *[1]")
    local lp = ffi_new("size_t[1]")

    local function get()
        if handle == nil then
            assert(require("ember.modules").need("kafka"))
            local h = C.em_changelog_find(jobname)
            if h ~= nil then
                handle = h
            end
        end
        return handle
    end

    -- The push of a stateful operator, noting each key's partition (an
    -- event-time window notes its state keys' itself).
    function cl.wrap(node, push, ctx)
        if not KEYED[node.op] then
            return push
        end
        local op = store.ops[node.state_name]
        local part, committed, staged = op.part, op.committed, op.staged
        local label = node.op .. " '" .. node.state_name .. "' (" .. tostring(node.where) .. ")"
        return function(a, b)
            local p = ctx.partition()            -- set once the executor is built
            local o = part[a]
            if o ~= p then
                if o ~= nil and (committed[a] ~= nil or (staged[a] ~= nil
                                                         and staged[a] ~= REMOVED)) then
                    error(label .. ": key " .. show(a) .. " came from partition " .. tostring(p)
                          .. " but its state lives with partition " .. tostring(o) .. "; a key's "
                          .. "state follows its Kafka partition, so its records must all come "
                          .. "from one (key them by the Kafka key; docs/scaling.md)", 0)
                end
                part[a] = p
            end
            return push(a, b)
        end
    end

    -- The store's prepare, for a changelog: the staged keys go to C, which
    -- writes them after this returns (core/lifecycle.c). Returns ok, err,
    -- bytes handed over.
    function cl.prepare(batch_id)
        if store.phase ~= "ran" then
            return false, "state: prepare of batch " .. tostring(batch_id) .. " without a "
                          .. "successful run (" .. store.phase .. ")", 0
        end
        local h = get()
        if h == nil then
            store:abort()
            return false, "state changelog '" .. topic .. "': the Kafka source has not opened it", 0
        end
        C.em_changelog_begin(h)
        C.em_changelog_set_version(h, my_version)
        local total = 0
        -- a change of state_version: each key of the partition written again
        -- as it is now (a key the batch staged is written below, as staged)
        for p, r in pairs(rewrite) do
            for _, e in ipairs(r.keys) do
                local op, k = e.op, e.k
                if not (op and op.staged[k] ~= nil) then
                    local v                     -- nil: a tombstone
                    if op and op.part[k] == p and op.committed[k] ~= nil then
                        v = encode({ op.committed[k], op.times and op.times[k] or nil })
                    end
                    if C.em_changelog_put(h, p, e.raw, #e.raw, v, v and #v or 0) ~= 0 then
                        C.em_changelog_begin(h)
                        store:abort()
                        return false, "state changelog '" .. topic .. "': out of memory", 0
                    end
                    total = total + #e.raw + (v and #v or 0)
                end
            end
            r.sent = true
        end
        for _, op in ipairs(store.order) do
            op.prepared = nil
            local part, stimes, times = op.part, op.stimes, op.times
            local function put(k, v)
                local p = part[k]
                if p == nil or p < 0 then
                    return "key " .. show(k) .. " of " .. op.kind .. " '" .. op.name
                           .. "' came from no Kafka partition"
                end
                local key = encode({ op.name, k })
                local rc
                if v == nil then
                    rc = C.em_changelog_put(h, p, key, #key, nil, 0)
                else
                    rc = C.em_changelog_put(h, p, key, #key, v, #v)
                    total = total + #v
                end
                total = total + #key
                if rc ~= 0 then
                    return "out of memory"
                end
            end
            local err
            for k, s in pairs(op.staged) do
                if s == REMOVED then
                    err = err or put(k, nil)
                else
                    err = err or put(k, encode({ s, stimes and (stimes[k] or times[k]) or nil }))
                end
            end
            if stimes then
                for k, t in pairs(stimes) do
                    if op.staged[k] == nil and op.committed[k] ~= nil then
                        err = err or put(k, encode({ op.committed[k], t }))
                    end
                end
            end
            if err then
                C.em_changelog_begin(h)
                store:abort()
                return false, "state changelog '" .. topic .. "': " .. err, 0
            end
        end
        store.phase = "prepared"
        store.batch_id = batch_id
        return true, nil, total
    end

    -- Entries "u32 klen, key, i32 vlen (-1: removed), value" of partition p
    -- from at, in the order written, applied to committed state; returns the
    -- partition's keys and the entries.
    local function load_same(p, data, at, len)
        local n, keys = 0, 0
        while at + 8 <= len do
            local kl = ffi_cast("const uint32_t *", data + at)[0]
            local key = decode(ffi_string(data + at + 4, kl))
            at = at + 4 + kl
            local vl = ffi_cast("const int32_t *", data + at)[0]
            at = at + 4
            local op = store.ops[key[1]]
            if op and op.part then
                local k = key[2]
                local had = op.part[k] == p
                op.reindex = true               -- ember.event_window: its index again
                if vl < 0 then
                    remove_key(op, k)
                    op.part[k] = nil
                    keys = keys - (had and 1 or 0)
                else
                    local v = decode(ffi_string(data + at, vl))
                    set_key(op, k, v[1], v[2])
                    op.part[k] = p
                    keys = keys + (had and 0 or 1)
                end
                n = n + 1
            end
            at = at + (vl > 0 and vl or 0)
        end
        return keys, n
    end

    -- The job's migrate on one partition's old state; returns name ->
    -- { key = stored } or nil, err.
    local function migrate(old, old_version)
        local ok, new = pcall(store.migrate, old, old_version)
        local where = "migrate of job '" .. jobname .. "' from state_version " .. old_version
                      .. " to " .. my_version
        if not ok then
            return nil, where .. " failed: " .. tostring(new)
        end
        if type(new) ~= "table" then
            return nil, where .. " must return a table (operator name -> { key = state }), got "
                        .. type(new)
        end
        local out = {}
        for name, m in pairs(new) do
            local op = store.ops[name]
            if not op or not op.part then
                return nil, where .. " returned state for operator '" .. tostring(name)
                            .. "', which the job does not declare"
            end
            if type(m) ~= "table" then
                return nil, where .. ": the state of '" .. name .. "' must be a table of key -> "
                            .. "state, got " .. type(m)
            end
            local stored = {}
            for k, v in pairs(m) do
                local sok, s = pcall(function()
                    state_mod.check_key(store, op, k)
                    return state_mod.stored(store, op, k, v)
                end)
                store.fatal = nil
                if not sok or s == nil then
                    return nil, where .. ": " .. tostring(s)
                end
                stored[k] = s
            end
            out[name] = stored
        end
        return out
    end

    -- The discarded state of partition p (entries from at), kept in a local
    -- archive as the load carried it; returns the file or nil.
    local function archive(p, version, data, at, len)
        local dir = store.dir .. "/archive-changelog-" .. os_time()
        if not files.mkdir_p(dir) then
            return nil
        end
        local path = dir .. "/" .. topic .. "-" .. p .. ".v" .. version:gsub("[^%w_.-]", "_")
        local f = io_open(path, "wb")
        if not f then
            return nil
        end
        f:write(ffi_string(data + at, len - at))
        f:close()
        return path
    end

    -- The entries from at as migrate sees them: old[name][key] = value;
    -- raws: encoded key -> { name, key }; n: the entries.
    local function parse_old(data, at, len)
        local old, raws, n = {}, {}, 0
        while at + 8 <= len do
            local kl = ffi_cast("const uint32_t *", data + at)[0]
            local raw = ffi_string(data + at + 4, kl)
            local key = decode(raw)
            at = at + 4 + kl
            local vl = ffi_cast("const int32_t *", data + at)[0]
            at = at + 4
            local name, k = key[1], key[2]
            old[name] = old[name] or {}
            if vl < 0 then
                old[name][k] = nil
            else
                old[name][k] = state_mod.value_of(decode(ffi_string(data + at, vl))[1])
            end
            raws[raw] = { name, k }
            n = n + 1
            at = at + (vl > 0 and vl or 0)
        end
        return old, raws, n
    end

    -- State of another state_version for partition p: migrated (or set
    -- aside), installed, and every key of it queued for the next commit.
    -- Returns keys, entries, or nil, err.
    local function load_other(p, version, data, at, len)
        local start = at
        local old, raws, n = parse_old(data, at, len)
        local maps, err = {}, nil
        if store.migrate and next(old) ~= nil then
            maps, err = migrate(old, version)
            if not maps then
                return nil, err
            end
        end
        local entries, keys = {}, 0
        for raw, nk in pairs(raws) do
            entries[#entries + 1] = { raw = raw, op = store.ops[nk[1]], k = nk[2] }
        end
        for name, m in pairs(maps) do
            local op = store.ops[name]
            for k, s in pairs(m) do
                set_key(op, k, s, nil)
                op.reindex = true
                op.part[k] = p
                keys = keys + 1
                local raw = encode({ name, k })
                if not raws[raw] then
                    entries[#entries + 1] = { raw = raw, op = op, k = k }
                end
            end
        end
        rewrite[p] = { keys = entries }
        local kept = not store.migrate and next(old) ~= nil and archive(p, version, data, start, len)
        ember.log("info", "state changelog: partition " .. p .. " holds state_version " .. version
                  .. ", the job " .. my_version .. ": " .. (store.migrate and (keys .. " keys migrated")
                  or ("its state is not carried over" .. (kept and (" (archived in " .. kept .. ")")
                                                         or ""))) .. "; " .. #entries
                  .. " keys are written again at the next commit")
        return keys, n
    end

    -- A load event: "u32 length, state_version" (0xffffffff: none named),
    -- then the entries.
    local function load(p, data, len)
        local vlen = ffi_cast("const uint32_t *", data)[0]
        if vlen == 0xffffffff then
            return load_same(p, data, 4, len)
        end
        local version = ffi_string(data + 4, vlen)
        if version == my_version then
            return load_same(p, data, 4 + vlen, len)
        end
        return load_other(p, version, data, 4 + vlen, len)
    end

    -- Drops the state of every key of partition p.
    local function drop(p)
        rewrite[p] = nil
        for _, op in ipairs(store.order) do
            local part = op.part
            for k, o in pairs(part) do
                if o == p then
                    remove_key(op, k)
                    part[k] = nil
                    op.reindex = true
                end
            end
        end
    end

    -- Applies what the rebalances queued, in order. Returns nil, or the
    -- error that stops the job (a partition whose state could not be read).
    function cl.sync()
        local h = get()
        if h == nil then
            return nil
        end
        if store.phase == "applied" then
            store:maintain()                    -- the last batch merged before any load or drop
        end
        while true do
            local kind = C.em_changelog_take(h, pp, dp, lp)
            if kind == 0 then
                return nil
            end
            local p = pp[0]
            local msg
            if kind == 1 then
                local t0 = C.em_clock_mono_ms()
                drop(p)
                local keys, n = load(p, dp[0], tonumber(lp[0]))
                if not keys then                -- a migrate that failed stops the job
                    msg = "state changelog: partition " .. p .. ": " .. tostring(n)
                    ember.log("error", msg)
                else
                    ember.log("info", "state changelog: partition " .. p .. ": " .. keys .. " keys "
                              .. "(" .. n .. " records) loaded in "
                              .. tonumber(C.em_clock_mono_ms() - t0) .. " ms")
                end
            elseif kind == 2 then
                drop(p)
            else
                msg = ffi_string(dp[0], lp[0])
            end
            C.em_changelog_taken(h)
            if msg then
                return msg
            end
        end
    end

    -- A reload's dry run, before the swap: migrate on the state of every
    -- partition this driver owns that holds another state_version, as the
    -- changelog has it now. Returns true, or false and the error (the old
    -- version keeps running).
    function cl.check_migrate()
        local h = get()
        if h == nil or not store.migrate then
            return true
        end
        local owned = ffi_new("int32_t[?]", 4096)
        local data = ffi_new("char *[1]")
        local errbuf = ffi_new("char[512]")
        for i = 0, C.em_changelog_owned(h, owned, 4096) - 1 do
            local p = owned[i]
            if C.em_changelog_peek(h, p, data, lp, errbuf, 512) ~= 0 then
                return false, "state changelog '" .. topic .. "': partition " .. p .. ": "
                              .. ffi_string(errbuf)
            end
            local d, len = data[0], tonumber(lp[0])
            local vlen = ffi_cast("const uint32_t *", d)[0]
            local err
            if vlen ~= 0xffffffff and ffi_string(d + 4, vlen) ~= my_version then
                local old = parse_old(d, 4 + vlen, len)
                if next(old) ~= nil then
                    local ok, merr = migrate(old, ffi_string(d + 4, vlen))
                    if not ok then
                        err = "state changelog: partition " .. p .. ": " .. tostring(merr)
                    end
                end
            end
            C.em_changelog_free(d)
            if err then
                return false, err
            end
        end
        return true
    end

    -- A reloaded job's new version: the partitions' state, read again.
    function cl.reload()
        local h = get()
        if h ~= nil and C.em_changelog_reload(h) ~= 0 then
            return false, "state changelog '" .. topic .. "': cannot read the state again"
        end
        return true
    end

    -- A commit that took: the rewrites it carried are done.
    local apply = store.apply
    store.apply = function(self, batch_id, later)
        local ok, err = apply(self, batch_id, later)
        if ok then
            for p, r in pairs(rewrite) do
                if r.sent then
                    rewrite[p] = nil
                end
            end
        end
        return ok, err
    end

    store.changelog = cl
    return cl
end


return _M
