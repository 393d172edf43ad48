-- ember: the module a job script requires.
--
--   local ember = require "ember"
--   local job = ember.job { name = "wc", batch_interval = "2s" }
--   job:socket { host = "localhost", port = 9999 }
--      :flat_map(split):map(function(w) return w, 1 end)
--      :reduce_by_key(function(a, b) return a + b end)
--      :print()
--   return job
--
-- One Lua state holds one job in the driver, but the runtime keeps the
-- "current host" here rather than in a global so that several jobs can be
-- loaded into one state (the unit specs do).

local job_mod = require "ember.job"

local error = error
local tostring = tostring
local io_stderr = io.stderr
local os_date = os.date
local setmetatable = setmetatable
local getmetatable = getmetatable
local pcall = pcall
local require = require


local _M = { _VERSION = "0.1.0" }

local LEVELS = { debug = true, info = true, warn = true, error = true }

local current_host, current_job   -- set by the runtime around load and run_batch
local created                     -- jobs made by the script being loaded


-- Declares a job. Misuse raises at the caller's line (see ember.job).
function _M.job(opts)
    local job = job_mod.new(opts, 3)
    if created then
        created[#created + 1] = job
    end
    return job
end


-- ember.log(level, msg): through the driver's log when running inside it,
-- to stderr otherwise (a script run by hand, a spec).
function _M.log(level, msg)
    if not LEVELS[level] then
        error("bad argument #1 to 'log' (one of debug, info, warn, error expected, got "
              .. tostring(level) .. ")", 2)
    end
    msg = tostring(msg)
    if current_host and current_host.log then
        return current_host.log(level, current_job or "-", msg)
    end
    io_stderr:write(os_date("!%Y-%m-%dT%H:%M:%SZ"), " ", level, " [",
                    current_job or "-", "] ", msg, "\n")
end


-- ember.disabled(reason): what a job script returns instead of a job when
-- it cannot run here (e.g. its broker is not configured). The driver logs
-- the reason and skips the file until it changes.
local DISABLED = {}

function _M.disabled(reason)
    return setmetatable({ reason = tostring(reason or "disabled by its script") }, DISABLED)
end

function _M._is_disabled(v)
    return getmetatable(v) == DISABLED
end


-- ember.json: the JSON decoder of format = "json" (lua/ember/json.lua).
_M.json = require "ember.json"


-- ember.redis(url): a pooled Redis connection for code in foreach_batch,
-- given back when the batch ends (lua/ember/redis.lua).
function _M.redis(url)
    return require("ember.redis").borrow(url)
end


-- Functions run after every batch, ok or not (connections borrowed for the
-- batch go back to their pools).
local batch_end_hooks = {}

function _M._on_batch_end(fn)
    for i = 1, #batch_end_hooks do
        if batch_end_hooks[i] == fn then
            return
        end
    end
    batch_end_hooks[#batch_end_hooks + 1] = fn
end

function _M._batch_ended()
    for i = 1, #batch_end_hooks do
        pcall(batch_end_hooks[i])
    end
end


-- Runtime hooks (not part of the user API).

function _M._set_context(host, job_name)
    current_host, current_job = host, job_name
end

-- Starts collecting the jobs a script creates; returns the collecting list.
function _M._begin_load()
    created = {}
    return created
end

function _M._end_load()
    local list = created
    created = nil
    return list
end


return _M
