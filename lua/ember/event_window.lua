-- ember.event_window: keyed event-time windows (docs/windows.md):
--
--   pairs:event_window { size = "10s" [, slide = "5s"] | gap = "30s",
--                        allowed_lateness = "5s", emit = "final" | "update",
--                        late = "drop" | "dead_letter", name = "..." }
--        :count() | :reduce(f) | :aggregate { zero =, add =, merge =, result = }
--   windowed:late()            -- the late (key, value) records, as a stream
--
-- A window's element is (key, { start = ms, stop = ms, value = v }) with
-- stop exclusive. Tumbling windows (size) and sliding ones (size, slide)
-- are aligned to the epoch; a session (gap) of a key grows while its
-- records come less than gap apart, and two sessions a record bridges
-- become one.
--
-- A record belongs to the windows its event time falls in. A window
-- closes when the watermark passes its stop plus allowed_lateness: emit =
-- "final" emits it then, once; "update" emits it in every batch that
-- changed it, and drops it silently then. A record whose every window is
-- already closed (as the previous batch left the watermark) is late: it
-- is counted in the job's clock, and goes to :late() when the job asks for
-- it, else is dropped or, with late = "dead_letter", written to the job's
-- dead-letter file.
--
-- State, in the job's store as operator <name>:
--   tumbling, sliding:  "<start>|<typed key>" -> accumulator
--   session:            "<typed key>" -> { { start, stop, acc }, ... }
-- In memory an index of open windows by stop (bucketed by the batch
-- interval) finds the windows to close without walking all of them; it is
-- rebuilt from the committed state after a restore, and a window whose
-- emission was aborted stays in it.
--
-- With a Kafka changelog (ember.state_changelog) each state key is noted
-- with the partition of its records (op.part), the windows of a partition
-- close by that partition's watermark and its records are late against it
-- (docs/scaling.md, "Event-time windows and the watermark").

local state = require "ember.state"
local event_time = require "ember.event_time"
local sinks = require "ember.sinks"

local error = error
local type = type
local tostring = tostring
local tonumber = tonumber
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local next = next
local getmetatable = getmetatable
local setmetatable = setmetatable
local math_floor = math.floor
local math_huge = math.huge
local io_open = io.open
local str_format = string.format
local str_match = string.match
local str_sub = string.sub
local decode = require("string.buffer").decode
local REMOVED = state.REMOVED
local stored = state.stored
local check_key = state.check_key
local committed_of = state.committed_of


local _M = {}


-- JSON strings for dead letters (lua-cjson when there, else by hand).
local json_string
do
    local ok, cjson = pcall(require, "cjson.safe")
    if ok then
        local enc = cjson.new().encode
        json_string = function(s) return (enc(s):gsub("\\/", "/")) end
    else
        json_string = function(s)
            return '"' .. s:gsub('[%c"\\]', function(c)
                return str_format("\\u%04x", c:byte())
            end) .. '"'
        end
    end
end


local callable = require "ember.callable"


-- Keys of any type in one string: "s" .. string, "n" .. number, "b" .. boolean.
local function typed(k)
    local t = type(k)
    if t == "string" then
        return "s" .. k
    elseif t == "number" then
        return "n" .. str_format("%.17g", k)
    end
    return "b" .. tostring(k)
end

local function untyped(s)
    local c, rest = str_sub(s, 1, 1), str_sub(s, 2)
    if c == "s" then
        return rest
    elseif c == "n" then
        return tonumber(rest)
    end
    return rest == "true"
end


-- Whether node's elements still carry a record's event time.
local function timed(node)
    if node.op == "event_time" then
        return true
    end
    if not event_time.NARROW[node.op] or #node.parents == 0 then
        return false
    end
    for _, p in ipairs(node.parents) do
        if not timed(p) then
            return false
        end
    end
    return true
end


function _M.declare(DStream, h)
    local Builder = {}
    Builder.__index = Builder

    local function dur(spec, k, zero_ok)
        local v = spec[k]
        if v == nil then
            return nil
        end
        if zero_ok and (v == 0 or v == "0") then
            return 0
        end
        local ms = h.duration_ms(v)
        if not ms then
            error("bad option '" .. k .. "' to 'event_window' (a duration such as \"10s\" "
                  .. "expected, got " .. tostring(v) .. ")", 3)
        end
        return ms
    end

    local KNOWN = { size = true, slide = true, gap = true, allowed_lateness = true,
                    emit = true, late = true, name = true }

    function DStream:event_window(spec)
        h.check_self(self, "event_window")
        if type(spec) ~= "table" then
            error("bad argument #1 to 'event_window' (table expected, got " .. type(spec)
                  .. "; use :event_window { size = \"10s\" })", 2)
        end
        for k in pairs(spec) do
            if not KNOWN[k] then
                error("bad argument #1 to 'event_window' (unknown option '" .. tostring(k)
                      .. "'; known: size, slide, gap, allowed_lateness, emit, late, name)", 2)
            end
        end
        h.need_pairs(self, "event_window")
        if not timed(self) then
            error("'event_window' needs the event time of its records: call "
                  .. ":event_time(...) upstream, with only map, filter, flat_map, map_values "
                  .. "or union in between (the stream from '" .. self.op .. "' at "
                  .. self.where .. " has none)", 2)
        end
        local size, slide, gap = dur(spec, "size"), dur(spec, "slide"), dur(spec, "gap")
        if (size == nil) == (gap == nil) then
            error("bad argument #1 to 'event_window' (give size (tumbling), size and slide "
                  .. "(sliding) or gap (session))", 2)
        end
        if gap and slide then
            error("bad argument #1 to 'event_window' (a session window (gap) takes no slide)", 2)
        end
        if slide and (slide > size or size % slide ~= 0) then
            error("bad option 'slide' to 'event_window' (the size must be a multiple of the "
                  .. "slide, and the slide at most the size)", 2)
        end
        local emit = spec.emit or "final"
        if emit ~= "final" and emit ~= "update" then
            error("bad option 'emit' to 'event_window' (\"final\" or \"update\" expected, got "
                  .. tostring(spec.emit) .. ")", 2)
        end
        local late = spec.late or "drop"
        if late ~= "drop" and late ~= "dead_letter" then
            error("bad option 'late' to 'event_window' (\"drop\" or \"dead_letter\" expected, "
                  .. "got " .. tostring(spec.late) .. "; :late() on the result gives a stream)", 2)
        end
        return setmetatable({
            parent = self, where = h.where(2), size = size, slide = slide or size, gap = gap,
            lateness = dur(spec, "allowed_lateness", true) or 0, emit = emit, late = late,
            name = spec.name,
        }, Builder)
    end

    local function finish(b, agg, level)
        if getmetatable(b) ~= Builder then
            error("calling an event_window method on bad self (use :event_window{...}:count())",
                  level)
        end
        local parent = b.parent
        h.check_self(parent, "event_window")
        local name = h.state_name(parent, "event_window", b.name, "event_window")
        local node = h.new_node(parent.job, "event_window", { parent }, "pair", b.where)
        for k, v in pairs(b) do
            if k ~= "parent" and k ~= "where" then
                node["w_" .. k] = v
            end
        end
        node.agg, node.state_name = agg, name
        parent.job.state_names.used[name] = b.where
        return node
    end

    function Builder:count()
        local node = finish(self, { kind = "count" }, 3)
        return node
    end

    function Builder:reduce(f)
        if not callable(f) then
            error("bad argument #1 to 'reduce' (function expected, got " .. type(f) .. ")", 2)
        end
        local node = finish(self, { kind = "reduce", f = f }, 3)
        return node
    end

    function Builder:aggregate(a)
        if type(a) ~= "table" or not callable(a.add) then
            error("bad argument #1 to 'aggregate' ({ zero =, add = function(acc, v) ... end "
                  .. "[, merge =, result =] } expected)", 2)
        end
        for k in pairs(a) do
            if k ~= "zero" and k ~= "add" and k ~= "merge" and k ~= "result" then
                error("bad argument #1 to 'aggregate' (unknown field '" .. tostring(k)
                      .. "'; known: zero, add, merge, result)", 2)
            end
        end
        if self.gap and not callable(a.merge) then
            error("bad argument #1 to 'aggregate' (a session window merges sessions a record "
                  .. "bridges: give merge = function(acc1, acc2) ... end)", 2)
        end
        if type(a.zero) == "table" then
            error("bad argument #1 to 'aggregate' (zero must be a function returning a fresh "
                  .. "accumulator when it is a table)", 2)
        end
        local node = finish(self, { kind = "aggregate", zero = a.zero, add = a.add,
                                    merge = a.merge, result = a.result }, 3)
        return node
    end

    function DStream:late()
        h.check_self(self, "late")
        if self.op ~= "event_window" then
            error("'late' is a method of the stream event_window gives, not of the stream from '"
                  .. self.op .. "' at " .. self.where, 2)
        end
        local node = h.new_node(self.job, "late_records", { self }, self.parents[1].shape,
                                h.where(2))
        node.side = true                -- not fed with the windows, only the late records
        return node
    end
end


function _M.register(node, store)
    store:add(node.state_name, "event_window", node.where)
end


local function visible(op, k)
    local s = op.staged[k]
    if s == nil then
        return committed_of(op, k)
    elseif s == REMOVED then
        return nil
    end
    return s
end


local function plain(s)
    if type(s) == "table" then
        return decode(s[1])
    end
    return s
end


local function store_value(store, op, k, v)
    local t = type(v)
    if t == "number" or t == "string" or t == "boolean" then
        return v
    end
    return stored(store, op, k, v)
end


-- late_records: the push the window feeds late records into.
function _M.make_late(node, ctx, out)
    ctx.late_push = ctx.late_push or {}
    ctx.late_push[node.parents[1]] = out
    local w = {}
    function w.reset() end
    function w.push() end
    function w.finish() return {}, {}, 0 end
    return w
end


-- The per-batch object of an event_window node.
function _M.make(node, ctx, out, store, job)
    local op = store.ops[node.state_name]
    local clock = event_time.clock(ctx, store, job)
    local size, slide, gap = node.w_size, node.w_slide, node.w_gap
    local lateness, emit_mode, late_policy = node.w_lateness, node.w_emit, node.w_late
    local late_out = ctx.late_push and ctx.late_push[node]
    local bucket_ms = job.interval_ms or 1000
    local agg = node.agg
    local kind, f = agg.kind, agg.f
    local zero, add, merge, result = agg.zero, agg.add, agg.merge, agg.result
    if kind == "count" then
        add = function(acc, _) return acc + 1 end
        merge = function(a, b) return a + b end
    elseif kind == "reduce" then
        merge = f
    end
    local function new_acc()
        if kind == "count" then
            return 0
        elseif kind == "reduce" then
            return nil
        elseif callable(zero) then
            return zero()
        end
        return zero
    end
    local function add_to(acc, v)
        if kind == "reduce" then
            if acc == nil then
                return v
            end
            return f(acc, v)
        end
        return add(acc, v)
    end
    local function merge_accs(a, b)
        if kind == "reduce" then
            if a == nil then return b end
            if b == nil then return a end
        end
        return merge(a, b)
    end
    local function result_of(acc)
        if result then
            return result(acc)
        end
        return acc
    end

    -- With a changelog (ember.state_changelog): state key -> the Kafka
    -- partition of its records; a partition's windows close by that
    -- partition's watermark, and its records are late against it.
    local part = op.part
    local wm_of = {}                    -- partition -> watermark, this batch
    local latep = {}                    -- partition -> late records, this batch

    local idx = {}                      -- bucket -> { state key = true }
    local idx_of = nil                  -- the committed map idx was built from
    local emitted = {}                  -- buckets whose windows the last run emitted
    local work, touched                 -- this batch: state key -> acc / session list
    local key_cache = {}                -- this batch: window start -> key -> state key (window_key)
    local changed                       -- sessions this batch made or grew
    local lk, lv, ln                    -- this batch's late records
    local wm_prev

    local function index(bucket_stop, key)
        local b = math_floor(bucket_stop / bucket_ms) * bucket_ms
        local s = idx[b]
        if not s then
            s = {}
            idx[b] = s
        end
        s[key] = true
    end

    local function rebuild()
        idx = {}
        local function add(k, s)
            if gap then
                for _, sess in ipairs(plain(s)) do
                    index(sess[2], k)
                end
            else
                local start = tonumber(str_match(k, "^([^|]+)|"))
                index(start + size, k)
            end
        end
        for k, s in pairs(op.committed) do
            add(k, s)
        end
        for k, s in pairs(op.added or {}) do    -- new keys while a snapshot is written
            add(k, s)
        end
        idx_of = op.committed
        emitted = {}
    end

    local w = {}

    function w.reset()
        if idx_of ~= op.committed or op.reindex then
            op.reindex = nil
            rebuild()                   -- a restore installed other maps, or loaded keys
        else
            -- what the last run emitted and the commit removed leaves the index
            for b in pairs(emitted) do
                local s = idx[b]
                if s then
                    for k in pairs(s) do
                        local c = committed_of(op, k)
                        if c == nil then
                            s[k] = nil
                            if part and op.staged[k] == nil then
                                part[k] = nil   -- its tombstone is written
                            end
                        elseif gap then
                            -- a session that grew or merged left this bucket
                            local here = false
                            for _, sess in ipairs(plain(c)) do
                                if math_floor(sess[2] / bucket_ms) * bucket_ms == b then
                                    here = true
                                end
                            end
                            if not here then
                                s[k] = nil
                            end
                        end
                    end
                    if next(s) == nil then
                        idx[b] = nil
                    end
                end
            end
            emitted = {}
        end
        work, touched, changed = {}, {}, {}
        key_cache = {}
        lk, lv, ln = {}, {}, 0
        wm_prev = nil
        if part then
            wm_of, latep = {}, {}
        end
    end

    local function late(a, b, p)
        ln = ln + 1
        lk[ln] = a
        lv[ln] = b
        if part then
            latep[p] = (latep[p] or 0) + 1
        end
    end

    -- With a changelog: the record's partition p, its watermark, and the
    -- check that state key sk's state is not another partition's (nil
    -- without a changelog).
    local label = "event_window '" .. node.state_name .. "' (" .. tostring(node.where) .. ")"
    local function partition_of()
        local p = ctx.partition()
        local wmp = wm_of[p]
        if wmp == nil then
            wmp = clock.watermark(p)
            wm_of[p] = wmp
        end
        return p, wmp
    end
    local function claim(sk, a, p)
        local o = part[sk]
        if o ~= p then
            if o ~= nil and visible(op, sk) ~= nil then
                error(label .. ": key " .. (type(a) == "string" and ('"' .. a .. '"')
                      or tostring(a)) .. " came from partition " .. tostring(p) .. " but its "
                      .. "window state lives with partition " .. tostring(o) .. "; a key's "
                      .. "state follows its Kafka partition, so its records must all come "
                      .. "from one (key them by the Kafka key; docs/scaling.md)", 0)
            end
            return true
        end
        return false
    end

    -- The state key of key a's window from start, "<start>|<typed key>",
    -- kept for the batch: most records of a batch fall in a few windows of
    -- a few keys, and making the string costs a number's formatting and
    -- two internings per record. (A NaN key is not kept: no table takes it.)
    local function window_key(start, a)
        local by_key = key_cache[start]
        if by_key == nil then
            by_key = {}
            key_cache[start] = by_key
        end
        local sk = by_key[a]
        if sk == nil then
            sk = start .. "|" .. typed(a)
            if a == a then
                by_key[a] = sk
            end
        end
        return sk
    end

    -- the accumulator of window key sk, read once per batch
    local function acc_of(sk)
        local acc = work[sk]
        if acc == nil and not touched[sk] then
            local s = visible(op, sk)
            if s ~= nil then
                acc = plain(s)
            else
                acc = new_acc()
            end
            touched[sk] = true
        end
        return acc
    end

    if gap then
        function w.push(a, b)
            local t = ctx.event_ts
            local tk = typed(a)
            local p, wmp
            if part then
                p, wmp = partition_of()
                if claim(tk, a, p) then
                    part[tk] = p
                end
            end
            local list = work[tk]
            if list == nil then
                check_key(store, op, a)
                local s = visible(op, tk)
                list = s and plain(s) or {}
                work[tk] = list
                touched[tk] = a
            end
            wm_prev = wmp or wm_prev or clock.watermark()
            local s, e = t, t + gap
            local acc = add_to(new_acc(), b)
            local keep, merged = {}, false
            for _, sess in ipairs(list) do
                if sess[1] < e and sess[2] > s then
                    if sess[1] < s then s = sess[1] end
                    if sess[2] > e then e = sess[2] end
                    acc = merge_accs(sess[3], acc)
                    merged = true
                else
                    keep[#keep + 1] = sess
                end
            end
            if not merged and e + lateness <= wm_prev then
                late(a, b, p)
                return
            end
            local sess = { s, e, acc }
            keep[#keep + 1] = sess
            work[tk] = keep
            changed[sess] = true
        end
    else
        function w.push(a, b)
            local t = ctx.event_ts
            local p, wmp
            if part then
                p, wmp = partition_of()
                wm_prev = wmp
            else
                wm_prev = wm_prev or clock.watermark()
            end
            local last = t - t % slide
            local any = false
            local start = last
            if part then
                -- every window of the record checked before any changes
                local claims
                while start > t - size do
                    if start + size + lateness > wm_prev then
                        local sk = window_key(start, a)
                        if claim(sk, a, p) then
                            claims = claims or {}
                            claims[#claims + 1] = sk
                        end
                    end
                    start = start - slide
                end
                if claims then
                    for _, sk in ipairs(claims) do
                        part[sk] = p
                    end
                end
                start = last
            end
            while start > t - size do
                local stop = start + size
                if stop + lateness > wm_prev then
                    local sk = window_key(start, a)
                    if not touched[sk] then
                        check_key(store, op, a)
                    end
                    work[sk] = add_to(acc_of(sk), b)
                    any = true
                end
                start = start - slide
            end
            if not any then
                late(a, b, p)
            end
        end
    end

    local function win(start, stop, acc)
        return { start = start, stop = stop, value = result_of(acc) }
    end

    local function write_dead(n)
        local fails = store.fails
        local path = fails and fails.path
        if not path then
            return
        end
        local ok = sinks.mkdir_p(fails.dir)
        local fh = ok and io_open(path, "ab")
        if not fh then
            fails.io_err = "cannot write dead letter " .. path
            return
        end
        for i = 1, n do
            local _, text = pcall(sinks.describe, lk[i], lv[i], "pair")
            fh:write('{"job":', json_string(ctx.job), ',"batch_time":',
                     str_format("%d", ctx.time or 0),
                     ',"error":"late record: every window it falls in is closed","record":',
                     json_string(tostring(text)), '}\n')
        end
        fh:close()
    end

    function w.finish()
        local rk, rv, rn = {}, {}, 0
        local staged = op.staged
        -- the batch's accumulators go to the store, and to the index
        for sk, acc in pairs(work) do
            if gap then
                if #acc == 0 then
                    staged[sk] = REMOVED
                else
                    staged[sk] = store_value(store, op, sk, acc)
                    for _, sess in ipairs(acc) do
                        index(sess[2], sk)
                    end
                end
            else
                staged[sk] = store_value(store, op, sk, acc)
                local start = tonumber(str_match(sk, "^([^|]+)|"))
                index(start + size, sk)
            end
        end
        local wm = clock.advance()
        -- update mode: every window the batch changed
        if emit_mode == "update" and out then
            for sk, acc in pairs(work) do
                if gap then
                    local k = touched[sk]
                    for _, sess in ipairs(acc) do
                        if changed[sess] then
                            rn = rn + 1
                            rk[rn] = k
                            rv[rn] = win(sess[1], sess[2], sess[3])
                        end
                    end
                else
                    local start, tk = str_match(sk, "^([^|]+)|(.*)$")
                    start = tonumber(start)
                    rn = rn + 1
                    rk[rn] = untyped(tk)
                    rv[rn] = win(start, start + size, acc)
                end
            end
        end
        -- windows the watermark closed (with a changelog: each by its
        -- partition's watermark, none beyond the highest)
        local limit = (part and clock.highest() or wm) - lateness
        local limits = {}
        for b, keys in pairs(idx) do
            if b <= limit then
                emitted[b] = true
                for sk in pairs(keys) do
                    local s = visible(op, sk)
                    local limit = limit
                    if part and s ~= nil then
                        local p = part[sk]
                        local l = p and limits[p]
                        if l == nil then
                            l = p and (clock.watermark(p) - lateness) or -math_huge
                            if p then
                                limits[p] = l
                            end
                        end
                        limit = l
                    end
                    if s ~= nil then
                        if gap then
                            local list = plain(s)
                            local keep = {}
                            local k = untyped(sk)
                            for _, sess in ipairs(list) do
                                if sess[2] <= limit then
                                    if emit_mode == "final" and out then
                                        rn = rn + 1
                                        rk[rn] = k
                                        rv[rn] = win(sess[1], sess[2], sess[3])
                                    end
                                else
                                    keep[#keep + 1] = sess
                                end
                            end
                            if #keep == 0 then
                                staged[sk] = REMOVED
                            elseif #keep < #list then
                                staged[sk] = store_value(store, op, sk, keep)
                            end
                        else
                            local start, tk = str_match(sk, "^([^|]+)|(.*)$")
                            start = tonumber(start)
                            if start + size <= limit then
                                if emit_mode == "final" and out then
                                    rn = rn + 1
                                    rk[rn] = untyped(tk)
                                    rv[rn] = win(start, start + size, plain(s))
                                end
                                staged[sk] = REMOVED
                            end
                        end
                    end
                end
            end
        end
        -- late records
        if ln > 0 then
            if part then
                for p, n in pairs(latep) do
                    clock.late(n, p)
                end
            else
                clock.late(ln)
            end
            local log = store.fails and store.fails.host and store.fails.host.log
            local where
            if late_out then
                for i = 1, ln do
                    late_out(lk[i], lv[i])
                end
                where = "sent to :late()"
            elseif late_policy == "dead_letter" then
                write_dead(ln)
                where = "written to " .. tostring(store.fails and store.fails.path)
            else
                where = "dropped"
            end
            if log then
                pcall(log, "warn", ctx.job, str_format("batch %d: %d late record%s %s by "
                      .. "event_window '%s' (%s); watermark %s", ctx.time or 0, ln,
                      ln == 1 and "" or "s", where, node.state_name, node.where,
                      event_time.show_ms(wm_prev or wm)))
            end
        end
        return rk, rv, rn
    end

    function w.size()
        return ln
    end

    return w
end


return _M
