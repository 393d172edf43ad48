-- ember.failures: a job's on_error policy, applied to the errors of one batch.
--
--   skip         count the record, go on; one "warn" log line per batch
--   dead_letter  count it and append a JSON line to
--                <checkpoint_dir>/<job>/dead_letter.jsonl; one log line per batch
--   fail         stop the batch; the driver stops the job (fatal)
--
-- One log line per batch, not per record: a job whose map raises on every
-- record must not flood the log at the input rate.

local sinks = require "ember.sinks"

local type = type
local tostring = tostring
local setmetatable = setmetatable
local pcall = pcall
local require = require
local io_open = io.open
local str_format = string.format
local str_gsub = string.gsub
local str_sub = string.sub


local _M = {}
local mt = { __index = _M }

local EXCERPT = 200


local json_string
do
    local ok, cjson = pcall(require, "cjson.safe")
    if ok then
        -- Debian's lua-cjson 2.1.0 escapes "/" as "\/" (valid, but noisy in
        -- paths) and has no switch for it. Undoing it is safe: a "/" in the
        -- input always becomes "\/", so no escaped backslash precedes a "/".
        local enc = cjson.new().encode
        json_string = function(s) return (str_gsub(enc(s), "\\/", "/")) end
    else
        local ESC = { ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\r'] = '\\r',
                      ['\t'] = '\\t' }
        json_string = function(s)
            return '"' .. str_gsub(s, '[%c"\\]', function(c)
                return ESC[c] or str_format("\\u%04x", c:byte())
            end) .. '"'
        end
    end
end


-- The first bytes of a record, control characters escaped, for a log line.
local function excerpt(s)
    s = tostring(s)
    local more = #s > EXCERPT
    s = str_gsub(str_sub(s, 1, EXCERPT), "[%z\1-\31\127]", function(c)
        return str_format("\\%d", c:byte())
    end)
    return more and (s .. "...") or s
end
_M.excerpt = excerpt


-- host: the runtime's host table (log, checkpoint_dir).
function _M.new(job_name, policy, host)
    local dir = (host and host.checkpoint_dir or "checkpoint") .. "/" .. job_name
    return setmetatable({
        job = job_name,
        policy = policy,
        host = host,
        dir = dir,
        path = dir .. "/dead_letter.jsonl",
        count = 0,
    }, mt)
end


function _M:begin(time_ms)
    self.time = time_ms
    self.fatal = nil
    self.count = 0
    self.first_err, self.first_rec = nil, nil
    self.io_err = nil
end


local function open_dead_letter(self)
    local ok, err = sinks.mkdir_p(self.dir)
    if not ok then
        return nil, err
    end
    return io_open(self.path, "ab")
end


-- Records one failure: err the error value, record the raw record or a
-- description of the element or output run. Returns true when the batch
-- must stop (policy fail, or a dead letter that could not be written).
function _M:add(err, record)
    if self.fatal then
        return true                     -- the batch fails whatever on_error says
    end
    err = type(err) == "string" and err or tostring(err)
    record = tostring(record)
    self.count = self.count + 1
    if self.count == 1 then
        self.first_err, self.first_rec = err, record
    end

    local policy = self.policy
    if policy == "fail" then
        return true
    end
    if policy == "dead_letter" then
        local f = self.file
        if not f then
            local ferr
            f, ferr = open_dead_letter(self)
            if not f then
                self.io_err = "cannot write dead letter " .. self.path .. ": " .. tostring(ferr)
                return true
            end
            self.file = f
        end
        local ok, werr = f:write('{"job":', json_string(self.job),
                                 ',"batch_time":', str_format("%d", self.time),
                                 ',"error":', json_string(err),
                                 ',"record":', json_string(record), '}\n')
        if not ok then
            self.io_err = "cannot write dead letter " .. self.path .. ": " .. tostring(werr)
            return true
        end
    end
    return false
end


-- Ends the batch: closes the dead-letter file, logs once. Returns the
-- number of failures, the first error (or nil) and, when the batch must be
-- reported as fatal because the dead letter could not be written, that error.
function _M:finish()
    local f = self.file
    if f then
        self.file = nil
        local ok, err = f:flush()
        f:close()
        if not ok and not self.io_err then
            self.io_err = "cannot write dead letter " .. self.path .. ": " .. tostring(err)
        end
    end

    local n = self.count
    if n == 0 then
        return 0, nil, nil
    end

    local log = self.host and self.host.log
    if log then
        local what
        if self.io_err then
            what = "; " .. self.io_err .. "; stopping the job"
        elseif self.policy == "fail" then
            what = " (on_error = fail: stopping the job)"
        elseif self.policy == "dead_letter" then
            what = ", written to " .. self.path
        else
            what = ", skipped"
        end
        local msg = str_format("batch %d: %d record%s failed%s; first error: %s; record: %s",
                               self.time, n, n == 1 and "" or "s", what,
                               self.first_err, excerpt(self.first_rec))
        pcall(log, (self.policy == "fail" or self.io_err) and "error" or "warn",
              self.job, msg)
    end
    return n, self.first_err, self.io_err
end


return _M
