-- ember.runtime: what the C host calls (docs/internals.md).
--
--   local desc, err = require("ember.runtime").load(path, host)
--   local ok, failed, err, fatal = desc.run_batch(view_ptr, batch_id)
--
-- A stateful job (desc.stateful) also gives the staged lifecycle of its
-- state: prepare(batch_id), apply(batch_id), abort(), restore(committed,
-- old_version), check_migrate(committed, old_version), state_bytes()
-- (ember.state; docs/internals.md).
--
-- load never raises: a syntax error, a misuse of the API or a bad graph
-- comes back as nil, "path:line: message".

local ember = require "ember"
local job_mod = require "ember.job"
local executor = require "ember.executor"
local state = require "ember.state"
local state_ops = require "ember.state_ops"
local state_changelog = require "ember.state_changelog"
local window_ops = require "ember.window_ops"
local event_time = require "ember.event_time"
local sinks = require "ember.sinks"
local tables = require "ember.table"

local loadfile = loadfile
local pcall = pcall
local error = error
local ipairs = ipairs
local type = type
local tonumber = tonumber
local tostring = tostring
local str_match = string.match
local str_find = string.find


local _M = {}


local function basename_job(path)
    local base = str_match(path, "([^/]*)$")
    return (str_match(base, "^(.*)%.lua$") or base)
end


-- Runs the script and returns its job, or raises "path[:line]: msg".
local function load_job(path, host)
    local chunk, err = loadfile(path)
    if not chunk then
        error(err, 0)
    end

    local created = ember._begin_load()
    ember._set_context(host, basename_job(path))
    local ok, ret = pcall(chunk)
    ember._end_load()
    if not ok then
        error(type(ret) == "string" and ret or tostring(ret), 0)
    end

    local job
    if ember._is_disabled(ret) then
        return nil, ret.reason
    elseif ret ~= nil then
        if not job_mod.is_job(ret) then
            error(path .. ": the script returned a " .. type(ret)
                  .. ", expected the job made by ember.job{...}", 0)
        end
        job = ret
    elseif #created == 1 then
        job = created[1]
    elseif #created == 0 then
        error(path .. ": no job declared (call ember.job{...} and return it)", 0)
    else
        error(path .. ": " .. #created .. " jobs declared and none returned; "
              .. "return the one to run", 0)
    end

    if job.sealed then
        error(path .. ": the job declared at " .. job.where .. " is already loaded", 0)
    end

    if job.name == nil then
        local name = basename_job(path)
        if not str_find(name, "^[%w_%-%.]+$") then
            error(job.where .. ": job name '" .. name .. "' (from the file name) may only "
                  .. "hold letters, digits, '_', '-' and '.'; set ember.job{ name = ... }", 0)
        end
        job.name = name
    end
    if #job.sources == 0 then
        error(job.where .. ": job '" .. job.name .. "' has no source", 0)
    end
    if #job.outputs == 0 then
        error(job.where .. ": job '" .. job.name .. "' has no output operation", 0)
    end
    -- Windows are multiples of the batch interval (the job's, else the
    -- configuration's streaming.batchInterval).
    local interval = job.batch_interval and state_ops.duration_ms(job.batch_interval)
                     or tonumber(host.batch_interval_ms) or 1000
    window_ops.check_intervals(job, interval)
    local counts = window_ops.counts_batches(job)
    if job.catch_up == true and counts then
        error(job.where .. ": job '" .. job.name .. "': catch_up = true cannot go with a "
              .. "processing-time window or update_state_by_key (their results count batches "
              .. "of the batch interval)", 0)
    end
    job.catch_up = job.catch_up ~= false and not counts
    job.interval_ms = interval
    job.sealed = true
    return job
end


-- Loads the job script at path. Returns the job description of
-- docs/internals.md, or nil and "path:line: message".
function _M.load(path, host)
    host = host or {}
    if tonumber(host.pool_size) then
        sinks.pool_size = tonumber(host.pool_size)
    end
    local ok, job, disabled = pcall(load_job, path, host)
    if not ok then
        return nil, type(job) == "string" and job or tostring(job)
    end
    if disabled then
        return { name = basename_job(path), disabled = disabled, sources = {}, outputs = {},
                 stateful = false, run_batch = function() return true, 0, nil, false end }
    end

    -- Where the job's operator state lives (docs/state.md).
    host.state_dir = host.state_dir or ((host.checkpoint_dir or "./checkpoint") .. "/" .. job.name
                                        .. "/state")
    local store = state.new(job, host)
    state_ops.register(job, store)
    -- state kept in a Kafka changelog rather than files (docs/scaling.md)
    local okc, cl = pcall(state_changelog.attach, job, store, host)
    if not okc then
        return nil, path .. ": " .. tostring(cl)
    end
    local ok2, run = pcall(executor.compile, job, host, store)
    if not ok2 then
        return nil, path .. ": " .. tostring(run)
    end

    local name = job.name
    local sources, outputs = {}, {}
    for i, s in ipairs(job.sources) do
        sources[i] = { type = s.type, options = s.options, where = s.where }
    end
    for i, o in ipairs(job.outputs) do
        outputs[i] = { kind = o.op, where = o.where }
    end

    return {
        name = name,
        batch_interval = job.batch_interval,
        catch_up = job.catch_up,
        on_error = job.on_error,
        state_version = job.state_version,
        memory = job.memory,
        batch_timeout = job.batch_timeout,
        sources = sources,
        outputs = outputs,
        -- reference tables: { name, kind, source, where } each, and what
        -- they hold now (read by the worker after each batch)
        tables = tables.describe_all(job),
        table_status = function() return tables.status(job) end,
        run_batch = function(view_ptr, batch_id)
            ember._set_context(host, name)
            local lost = cl and cl.sync()
            if lost then
                ember._batch_ended()
                return false, 0, lost, true
            end
            local ok, failed, err, fatal = run(view_ptr, batch_id)
            ember._batch_ended()
            return ok, failed, err, fatal
        end,
        stateful = store:is_stateful(),
        state_max = store.max,
        state_dir = store.dir,
        prepare = cl and cl.prepare or function(batch_id) return store:prepare(batch_id) end,
        -- later: the driver calls maintain itself, after the acks; without
        -- it (specs, benches) the snapshot slice follows at once
        apply = function(batch_id, later)
            local ok, err = store:apply(batch_id, later)
            if not later then
                local mok, merr = store:maintain()
                if not mok then
                    err = err or merr
                end
            end
            return ok, err
        end,
        maintain = function() return store:maintain() end,
        abort = function() return store:abort() end,
        restore = function(committed, old_version)
            ember._set_context(host, name)
            if cl then                          -- each partition's, as it is assigned;
                return cl.reload()              -- after a reload, those it owns again
            end
            return store:restore(committed, old_version)
        end,
        check_migrate = function(committed, old_version)
            ember._set_context(host, name)
            if cl then                          -- on the changelog, partition by partition
                return cl.check_migrate()
            end
            return store:check_migrate(committed, old_version)
        end,
        state_bytes = function() return store:state_bytes() end,
        -- records event-time windows found late, since the job's state
        -- began; -1 for a job without event time
        late_records = function()
            local op = store.ops["event_time#clock"]
            return op and event_time.late_total(op, true) or -1
        end,
    }
end


return _M
