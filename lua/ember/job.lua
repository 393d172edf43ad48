-- ember.job: a job, its options and its sources.
--
-- A job records what the script declares: its sources (passed through to the
-- C core, which validates options per connector), the DStream graph hanging
-- off them, and its outputs in declaration order. The graph is compiled by
-- ember.executor once the script has run; after that the job is sealed.

local dstream = require "ember.dstream"
local state = require "ember.state"

local error = error
local type = type
local tostring = tostring
local pairs = pairs
local ipairs = ipairs
local tonumber = tonumber
local setmetatable = setmetatable
local pcall = pcall
local math = math
local getmetatable = getmetatable
local str_find = string.find
local str_match = string.match


local _M = {}

local Job = {}
Job.__index = Job
_M.Job = Job

local ON_ERROR = { skip = true, dead_letter = true, fail = true }
local OPTIONS = { name = true, batch_interval = true, on_error = true, state_version = true,
                  state_max = true, migrate = true, memory = true, batch_timeout = true,
                  catch_up = true }
local SOURCES = { "generator", "socket", "file", "kafka", "rabbitmq", "redis" }


local function check_batch_interval(v, level)
    local t = type(v)
    if t == "number" then
        if v > 0 then return end
    elseif t == "string" then
        local num, unit = str_match(v, "^%s*(%d+%.?%d*)%s*(%a+)%s*$")
        if num and (unit == "ms" or unit == "s" or unit == "m" or unit == "h")
                and tonumber(num) > 0 then
            return
        end
    end
    error("bad option 'batch_interval' to 'job' (a duration such as \"500ms\", \"2s\", "
          .. "\"1m\" or a number of seconds expected, got " .. tostring(v) .. ")", level + 1)
end


-- memory: bytes, or "64m", "512k", "1g"; 0 for no cap.
local function check_memory(v, level)
    if type(v) == "number" and v >= 0 and v == math.floor(v) then return end
    if type(v) == "string" and (str_match(v, "^%s*%d+%.?%d*%s*[kKmMgG]?[bB]?%s*$")) then return end
    error("bad option 'memory' to 'job' (a size such as \"64m\", \"1g\" or a number of bytes, "
          .. "0 for no cap, expected, got " .. tostring(v) .. ")", level + 1)
end


-- batch_timeout: a duration or seconds; 0 for no deadline.
local function check_timeout(v, level)
    if v == 0 or v == "0" then return end
    local ok = pcall(check_batch_interval, v, 1)
    if ok then return end
    error("bad option 'batch_timeout' to 'job' (a duration such as \"30s\" or a number of "
          .. "seconds, 0 for none, expected, got " .. tostring(v) .. ")", level + 1)
end


-- Builds a job from the options of ember.job{...}. level is the error level
-- of the user's call, so misuse points at the script line.
function _M.new(opts, level)
    level = level or 2
    if opts == nil then
        opts = {}
    elseif type(opts) ~= "table" then
        error("bad argument #1 to 'job' (table expected, got " .. type(opts) .. ")", level)
    end

    for k in pairs(opts) do
        if not OPTIONS[k] then
            error("bad argument #1 to 'job' (unknown option '" .. tostring(k)
                  .. "'; known: name, batch_interval, on_error, state_version, state_max, "
                  .. "migrate, memory, batch_timeout, catch_up)", level)
        end
    end

    local name = opts.name
    if name ~= nil and (type(name) ~= "string" or not str_find(name, "^[%w_%-%.]+$")) then
        error("bad option 'name' to 'job' (a non-empty string of letters, digits, "
              .. "'_', '-' and '.' expected, got " .. (type(name) == "string"
              and ("'" .. name .. "'") or type(name)) .. ")", level)
    end

    local on_error = opts.on_error
    if on_error == nil then
        on_error = "skip"
    elseif not ON_ERROR[on_error] then
        error("bad option 'on_error' to 'job' (\"skip\", \"dead_letter\" or \"fail\" "
              .. "expected, got " .. tostring(on_error) .. ")", level)
    end

    if opts.batch_interval ~= nil then
        check_batch_interval(opts.batch_interval, level)
    end
    if opts.memory ~= nil then
        check_memory(opts.memory, level)
    end
    if opts.batch_timeout ~= nil then
        check_timeout(opts.batch_timeout, level)
    end

    if opts.state_max ~= nil and not state.parse_size(opts.state_max) then
        error("bad option 'state_max' to 'job' (a size such as \"64m\", \"512k\", \"1g\" "
              .. "or a number of bytes expected, got " .. tostring(opts.state_max) .. ")", level)
    end
    local sv = opts.state_version
    if sv ~= nil and type(sv) ~= "number" and type(sv) ~= "string" then
        error("bad option 'state_version' to 'job' (number or string expected, got "
              .. type(sv) .. ")", level)
    end
    if opts.catch_up ~= nil and type(opts.catch_up) ~= "boolean" then
        error("bad option 'catch_up' to 'job' (boolean expected, got "
              .. type(opts.catch_up) .. ")", level)
    end
    if opts.migrate ~= nil and type(opts.migrate) ~= "function" then
        error("bad option 'migrate' to 'job' (function(old_state, old_version) expected, got "
              .. type(opts.migrate) .. ")", level)
    end

    return setmetatable({
        name = name,                    -- nil: the runtime uses the file name
        batch_interval = opts.batch_interval,
        on_error = on_error,
        state_version = opts.state_version,
        state_max = opts.state_max,     -- nil: the host's state.max
        migrate = opts.migrate,
        memory = opts.memory,           -- nil: streaming.job.memory
        batch_timeout = opts.batch_timeout, -- nil: streaming.job.batchTimeout
        catch_up = opts.catch_up,       -- nil: streaming.catchUp.enabled, unless the graph counts batches
        where = dstream.where(level),
        sources = {},                   -- { type=, options=, where= } in order
        nodes = {},                     -- every DStream, in creation order
        outputs = {},                   -- output nodes, in declaration order
        sealed = false,
    }, Job)
end


function _M.is_job(v)
    return getmetatable(v) == Job
end


for _, kind in ipairs(SOURCES) do
    -- job:<kind>{ options }: declares a source and returns its DStream.
    Job[kind] = function(self, options)
        if getmetatable(self) ~= Job then
            error("calling '" .. kind .. "' on bad self (job expected; use job:"
                  .. kind .. "{...})", 2)
        end
        if type(options) ~= "table" then
            error("bad argument #1 to '" .. kind .. "' (table expected, got "
                  .. type(options) .. ")", 2)
        end
        if self.sealed then
            error("cannot add a source to job '" .. tostring(self.name)
                  .. "' once it is loaded", 2)
        end
        -- format is Lua's business: what an element of the source is. It
        -- goes to C too (a connector reads less when it is not "record":
        -- Kafka skips headers), with the rest, which the connector checks.
        local format = options.format
        if format ~= nil and format ~= "value" and format ~= "record" and format ~= "json"
           and format ~= "bytes" then
            error("bad option 'format' to '" .. kind .. "' (\"value\", \"bytes\", \"record\" or "
                  .. "\"json\" expected, got " .. tostring(format) .. ")", 2)
        end
        -- fields is Lua's too (json.projection): only those of each object
        local fields = options.fields
        if fields ~= nil then
            if format ~= "json" then
                error("bad option 'fields' to '" .. kind .. "' (it names the fields format = "
                      .. "\"json\" keeps; this source's format is " .. tostring(format or "value")
                      .. ")", 2)
            end
            local ok = type(fields) == "table" and #fields > 0
            for k, f in pairs(ok and fields or {}) do
                ok = ok and type(k) == "number" and type(f) == "string"
            end
            if not ok then
                error("bad option 'fields' to '" .. kind .. "' (a list of field names "
                      .. "expected, e.g. { \"ad_id\", \"event_type\" })", 2)
            end
        end
        local passed = {}
        for k, v in pairs(options) do
            if k ~= "fields" then
                passed[k] = v
            end
        end
        local where = dstream.where(2)
        local n = #self.sources + 1
        self.sources[n] = { type = kind, options = passed, where = where,
                            format = format or "value", fields = fields }
        return dstream.new_source(self, n, kind, where)
    end
end


-- job:table{...}: a reference table (ember.table).
require("ember.table").declare(Job, dstream.where)


return _M
