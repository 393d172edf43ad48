-- support.driver: runs the real ember binary for the end-to-end specs.
--
--   local driver = require "support.driver"
--   local d = driver.new()                     -- a temp folder with jobs/
--   d:write_job("wc.lua", src)                 -- <tmp>/jobs/wc.lua, atomically
--   d:start { conf = { ["streaming.blockInterval"] = "100ms" } }
--   d:wait_for_log("started from")
--   local lines = d:wait_until(function() ... end, 10, 0.05, "all the words")
--   d:signal("TERM"); assert.equal(0, d:wait_exit(10))
--   d:stop()                                    -- in after_each: kills leftovers
--
-- ember runs as `ember run --conf checkpoint.dir=<tmp>/checkpoint
-- --log-level debug [--conf k=v ...] <tmp>/jobs` from inside <tmp>, its
-- stdout and stderr going to <tmp>/stdout and <tmp>/stderr.
--
-- Every wait polls a condition against a deadline and fails with a message
-- naming what it waited for and the end of ember's log; nothing sleeps and
-- hopes. EMBER_SPEC_KEEP=1 keeps the temp folders; EMBER_BIN overrides the
-- binary (default: ./ember at the repository root).

local unistd = require "posix.unistd"
local fcntl = require "posix.fcntl"
local wait = require "posix.sys.wait"
local psignal = require "posix.signal"
local stdlib = require "posix.stdlib"
local dirent = require "posix.dirent"
local sys_stat = require "posix.sys.stat"
local ptime = require "posix.time"
local socket = require "socket"

local error = error
local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local io_open = io.open
local os_getenv = os.getenv
local str_format = string.format
local str_find = string.find
local str_match = string.match
local str_sub = string.sub
local tbl_concat = table.concat
local tbl_sort = table.sort


local _M = {}

local Driver = {}
Driver.__index = Driver
_M.Driver = Driver


-- The repository root: two folders above this file.
local ROOT
do
    local src = debug.getinfo(1, "S").source
    local here = str_sub(src, 1, 1) == "@" and str_sub(src, 2) or "spec/support/driver.lua"
    local dir = str_match(here, "^(.*)/spec/support/[^/]*$") or "."
    ROOT = stdlib.realpath(dir) or dir
end
_M.root = ROOT
_M.bin = os_getenv("EMBER_BIN") or (ROOT .. "/ember")


-- Seconds on a monotonic clock, for deadlines.
function _M.now()
    local t = ptime.clock_gettime(ptime.CLOCK_MONOTONIC)
    return t.tv_sec + t.tv_nsec / 1e9
end
local now = _M.now

function _M.sleep(seconds)
    socket.sleep(seconds)
end
local sleep = _M.sleep


-- Polls fn() every `interval` seconds (default 0.02) until it returns a
-- truthy value, which is returned with the rest of fn's results. Raises
-- when `timeout` seconds (default 10) pass first: "timed out after Ns
-- waiting for <what>", plus the last second result of fn (a description of
-- what it saw) and `extra` when given (a function returning more context).
function _M.wait_until(fn, timeout, interval, what, extra)
    timeout = timeout or 10
    interval = interval or 0.02
    local deadline = now() + timeout
    local last
    while true do
        local r = { fn() }
        if r[1] then
            return unpack(r)
        end
        last = r[2]
        if now() >= deadline then
            break
        end
        sleep(interval)
    end
    local msg = str_format("timed out after %gs waiting for %s", timeout,
                           tostring(what or "a condition"))
    if last ~= nil then
        msg = msg .. "\nlast seen: " .. tostring(last)
    end
    if extra then
        msg = msg .. "\n" .. tostring(extra())
    end
    error(msg, 2)
end
local wait_until = _M.wait_until


function _M.read_file(path)
    local f = io_open(path, "rb")
    if not f then
        return nil
    end
    local s = f:read("*a")
    f:close()
    return s
end
local read_file = _M.read_file


-- Writes path atomically: a temp file beside it, then rename, so that a
-- reader (ember rescanning jobs/, a tailing file source) never sees half.
function _M.write_file(path, content)
    local tmp = path:gsub("([^/]*)$", ".%1.tmp")
    local f = assert(io_open(tmp, "wb"))
    assert(f:write(content))
    assert(f:close())
    assert(os.rename(tmp, path))
end
local write_file = _M.write_file


-- Appends to path (creating it) and flushes.
function _M.append_file(path, content)
    local f = assert(io_open(path, "ab"))
    assert(f:write(content))
    assert(f:close())
end


-- Lines of a string, without their "\n"; a last line without "\n" counts.
function _M.lines(s)
    local out = {}
    if not s then
        return out
    end
    for line in s:gmatch("([^\n]*)\n") do
        out[#out + 1] = line
    end
    local rest = str_match(s, "([^\n]+)$")
    if rest then
        out[#out + 1] = rest
    end
    return out
end
local lines_of = _M.lines


-- A Lua literal for s, to put paths and text into job scripts.
function _M.quote(s)
    return str_format("%q", s)
end


-- Fills "{{name}}" in a job template with vars.name (as is: quote
-- strings with driver.quote). An unknown name raises, so a typo in a spec
-- does not become a job that silently reads nil.
function _M.render(template, vars)
    return (template:gsub("{{([%w_]+)}}", function(k)
        local v = vars[k]
        if v == nil then
            error("render: no value for {{" .. k .. "}}", 3)
        end
        return tostring(v)
    end))
end


-- The configuration the end-to-end specs run with unless they say
-- otherwise: short intervals keep the suite fast.
_M.FAST = {
    ["streaming.blockInterval"] = "100ms",
    ["streaming.batchInterval"] = "200ms",
}

-- FAST plus the given keys (a key set to false is left out).
function _M.conf(extra)
    local c = {}
    for k, v in pairs(_M.FAST) do
        c[k] = v
    end
    for k, v in pairs(extra or {}) do
        c[k] = v or nil
    end
    return c
end


local function shell_quote(s)
    return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function rm_rf(path)
    if path and #path > 5 then
        os.execute("rm -rf " .. shell_quote(path))
    end
end

local function mkdir(path)
    local ok, err = sys_stat.mkdir(path, 493)   -- 0755
    if not ok and not sys_stat.stat(path) then
        error("cannot create " .. path .. ": " .. tostring(err), 2)
    end
end
_M.mkdir = mkdir


-- Drivers still alive, killed when busted's Lua state closes (a spec that
-- errors before its after_each, a crash of the runner): no ember outlives
-- the suite.
local live = setmetatable({}, { __mode = "k" })
_M._sentinel = newproxy(true)
getmetatable(_M._sentinel).__gc = function()
    for d in pairs(live) do
        pcall(d.stop, d)
    end
end


-- A fresh temp folder holding jobs/ and (once ember runs) checkpoint/.
function _M.new(opts)
    opts = opts or {}
    local base = os_getenv("TMPDIR")
    if not base or base == "" then
        base = "/tmp"
    end
    local dir, err = stdlib.mkdtemp(base .. "/ember-e2e-XXXXXX")
    if not dir then
        error("mkdtemp: " .. tostring(err), 2)
    end
    local self = setmetatable({
        dir = dir,
        jobs_dir = dir .. "/jobs",
        checkpoint_dir = dir .. "/checkpoint",
        stdout_path = dir .. "/stdout",
        stderr_path = dir .. "/stderr",
        pid = nil,
        status = nil,           -- exit code once reaped
        how = nil,              -- "exited" or "killed"
    }, Driver)
    mkdir(self.jobs_dir)
    live[self] = true
    return self
end


-- <tmp>/name, or <tmp> itself.
function Driver:path(name)
    if name == nil then
        return self.dir
    end
    return self.dir .. "/" .. name
end


-- Writes a job script into jobs/ (atomically) and returns its path.
function Driver:write_job(name, source)
    if not str_find(name, "%.lua$") then
        name = name .. ".lua"
    end
    local path = self.jobs_dir .. "/" .. name
    write_file(path, source)
    return path
end


function Driver:remove_job(name)
    if not str_find(name, "%.lua$") then
        name = name .. ".lua"
    end
    assert(os.remove(self.jobs_dir .. "/" .. name))
end


-- Starts `ember run`. opts.conf: { key = value } or { "key=value", ... }
-- added as --conf flags (sorted, so the command line is stable);
-- opts.args: more arguments before the jobs folder; opts.log_level
-- (default "debug", false for no --log-level); opts.jobs_dir (default <tmp>/jobs); opts.env:
-- { NAME = "value" } set, { NAME = false } unset, in ember's environment
-- only (the rest is inherited, as without it). Returns the pid.
function Driver:start(opts)
    opts = opts or {}
    if self.pid and not self.status then
        error("ember is already running (pid " .. self.pid .. ")", 2)
    end
    -- ui.port=0: the kernel picks a free port for the HTTP server, so specs
    -- running side by side never meet on 4040 (a spec's own ui.port wins:
    -- its --conf comes later). http_port() reads it from the log.
    local argv = { "run", "--conf", "checkpoint.dir=" .. self.checkpoint_dir, "--conf", "ui.port=0" }
    if opts.log_level ~= false then -- false: none, log.level comes from the configuration
        argv[#argv + 1] = "--log-level"
        argv[#argv + 1] = opts.log_level or "debug"
    end
    local conf = {}
    for k, v in pairs(opts.conf or _M.conf()) do
        if type(k) == "number" then
            conf[#conf + 1] = v
        else
            conf[#conf + 1] = k .. "=" .. tostring(v)
        end
    end
    tbl_sort(conf)
    for _, kv in ipairs(conf) do
        argv[#argv + 1] = "--conf"
        argv[#argv + 1] = kv
    end
    for _, a in ipairs(opts.args or {}) do
        argv[#argv + 1] = a
    end
    argv[#argv + 1] = opts.jobs_dir or self.jobs_dir
    self.argv = argv
    self.pid, self.status, self.how = self:spawn(_M.bin, argv, opts.env), nil, nil
    return self.pid
end


-- Forks and execs bin with argv, in <tmp>, stdout and stderr to files;
-- env: variables to set (a string) or unset (false) in the child.
function Driver:spawn(bin, argv, env)
    io.stdout:flush()
    io.stderr:flush()
    -- Empty the log files before the child exists, so a wait_for_log right
    -- after a restart cannot match the previous run's lines.
    for _, path in ipairs({ self.stdout_path, self.stderr_path }) do
        local f = io.open(path, "w")
        if f then
            f:close()
        end
    end
    local pid, err = unistd.fork()
    if not pid then
        error("fork: " .. tostring(err), 2)
    end
    if pid == 0 then
        -- The child: no Lua error may escape into a copy of busted.
        local ok, why = pcall(function()
            unistd.chdir(self.dir)
            for k, v in pairs(env or {}) do
                stdlib.setenv(k, v and tostring(v) or nil)
            end
            local flags = fcntl.O_WRONLY + fcntl.O_CREAT + fcntl.O_TRUNC
            local out = fcntl.open(self.stdout_path, flags, 420)
            local errf = fcntl.open(self.stderr_path, flags, 420)
            local null = fcntl.open("/dev/null", fcntl.O_RDONLY)
            if out and errf and null then
                unistd.dup2(null, 0)
                unistd.dup2(out, 1)
                unistd.dup2(errf, 2)
                -- Sockets the spec holds (a server's accepted connection)
                -- must not live on in ember: closing them must reach the peer.
                for fd = 3, 1023 do
                    unistd.close(fd)
                end
                local _, eerr = unistd.execp(bin, argv)
                error("cannot run " .. bin .. ": " .. tostring(eerr), 0)
            end
            error("cannot open the output files in " .. self.dir, 0)
        end)
        -- Only reached when exec did not happen: say why in the log file.
        pcall(unistd.write, 2, "support.driver: " .. tostring(ok or why) .. "\n")
        unistd._exit(127)
    end
    return pid
end


-- Reaps the child without blocking; true once it has exited.
function Driver:poll_exit()
    if self.status then
        return true
    end
    if not self.pid then
        return false
    end
    local pid, how, code = wait.wait(self.pid, wait.WNOHANG)
    if pid == self.pid then
        self.how = how
        self.status = how == "killed" and 128 + code or code
        return true
    end
    if pid == nil then                  -- ECHILD: reaped elsewhere
        self.how, self.status = "lost", -1
        return true
    end
    return false
end


function Driver:running()
    return self.pid ~= nil and not self:poll_exit()
end


local SIGNALS = { HUP = psignal.SIGHUP, TERM = psignal.SIGTERM, INT = psignal.SIGINT,
                  KILL = psignal.SIGKILL, QUIT = psignal.SIGQUIT }

-- signal("HUP") or signal(psignal.SIGHUP).
function Driver:signal(sig)
    local n = type(sig) == "number" and sig or SIGNALS[sig]
    if not n then
        error("unknown signal " .. tostring(sig), 2)
    end
    if not self:running() then
        error("cannot send SIG" .. tostring(sig) .. ": ember is not running (exit status "
              .. tostring(self.status) .. ")\n" .. self:log_tail(), 2)
    end
    assert(psignal.kill(self.pid, n))
end


-- Waits for ember to exit; returns its exit code (128 + signal when
-- killed). Raises after timeout seconds (default 10).
function Driver:wait_exit(timeout)
    wait_until(function() return self:poll_exit() end, timeout or 10, 0.02,
               "ember (pid " .. tostring(self.pid) .. ") to exit",
               function() return self:log_tail() end)
    return self.status, self.how
end


-- Kills ember if it still runs and removes the temp folder. Safe to call
-- twice and on a driver that never started.
function Driver:stop()
    if self.pid and not self:poll_exit() then
        psignal.kill(self.pid, psignal.SIGKILL)
        local deadline = now() + 5
        while not self:poll_exit() and now() < deadline do
            sleep(0.01)
        end
    end
    if self.servers then
        for _, s in ipairs(self.servers) do
            pcall(s.close, s)
        end
        self.servers = nil
    end
    if os_getenv("EMBER_SPEC_KEEP") == "1" then
        if not self.kept then
            io.stderr:write("\n[kept " .. self.dir .. "]\n")
            self.kept = true
        end
    else
        rm_rf(self.dir)
    end
    live[self] = nil
end


-- ember's stderr (the log) and stdout, as strings.
function Driver:log()
    return read_file(self.stderr_path) or ""
end

function Driver:stdout()
    return read_file(self.stdout_path) or ""
end


-- The last n lines of the log, for failure messages.
function Driver:log_tail(n)
    n = n or 40
    local l = lines_of(self:log())
    local from = #l - n + 1
    if from < 1 then
        from = 1
    end
    local out = { "--- last lines of ember's log (" .. self.stderr_path .. ") ---" }
    for i = from, #l do
        out[#out + 1] = l[i]
    end
    if self.status then
        out[#out + 1] = "--- ember exited with status " .. tostring(self.status) .. " ---"
    end
    return tbl_concat(out, "\n")
end


-- A position in the log: wait_for_log(..., { from = mark }) only looks
-- at what was logged after it.
function Driver:log_mark()
    return #self:log()
end


-- Log lines matching a Lua pattern (opts.plain: a plain substring),
-- after opts.from (a log_mark).
function Driver:log_lines(pattern, opts)
    opts = opts or {}
    local log = self:log()
    if opts.from then
        log = str_sub(log, opts.from + 1)
    end
    local found = {}
    for _, line in ipairs(lines_of(log)) do
        if pattern == nil or str_find(line, pattern, 1, opts.plain) then
            found[#found + 1] = line
        end
    end
    return found
end


-- Waits until the log has a line matching pattern (opts.count: that many
-- lines; opts.from; opts.plain) and returns the first matching line
-- and all of them. Fails early when ember exits meanwhile (unless
-- opts.exit_ok).
function Driver:wait_for_log(pattern, timeout, opts)
    opts = opts or {}
    local count = opts.count or 1
    local found
    self:wait_until(function()
        found = self:log_lines(pattern, opts)
        if #found >= count then
            return true
        end
        if not opts.exit_ok and self.pid and self:poll_exit() then
            error("ember exited with status " .. tostring(self.status)
                  .. " while waiting for a log line matching '" .. pattern .. "'\n"
                  .. self:log_tail(), 0)
        end
        return false, #found .. " of " .. count .. " lines"
    end, timeout or 10, 0.02, "a log line matching '" .. pattern .. "'"
       .. (count > 1 and (" (" .. count .. " times)") or ""))
    return found[1], found
end


-- wait_until with ember's log tail in the failure message.
function Driver:wait_until(fn, timeout, interval, what)
    return wait_until(fn, timeout, interval, what, function() return self:log_tail() end)
end


-- The batch summaries of the debug log for job: { time=, records=, blocks=,
-- failed= } in log order.
function Driver:batches(job)
    local out = {}
    for _, line in ipairs(self:log_lines("%[" .. job:gsub("%p", "%%%0") .. "%] batch %d+:")) do
        local t, n, b = str_match(line, "batch (%d+): (%d+) records? in (%d+) blocks?")
        local failed = str_match(line, "(%d+) failed")
        if t then
            out[#out + 1] = { time = tonumber(t), records = tonumber(n), blocks = tonumber(b),
                              failed = tonumber(failed), line = line }
        end
    end
    return out
end


-- The files save_as_text_files wrote for prefix (a path; relative ones
-- are under <tmp>): every "<prefix>-<time>[.suffix]" but temp files,
-- sorted by batch time. Returns { { time=, path=, lines= } ... }.
function Driver:output_files(prefix)
    if str_sub(prefix, 1, 1) ~= "/" then
        prefix = self.dir .. "/" .. prefix
    end
    local dir, base = str_match(prefix, "^(.*)/([^/]*)$")
    local files = {}
    if not sys_stat.stat(dir) then
        return files
    end
    local pat = "^" .. base:gsub("%p", "%%%0") .. "%-(%d+)"
    for name in dirent.files(dir) do
        local t = str_match(name, pat)
        if t and not str_find(name, "%.tmp$") and str_sub(name, 1, 1) ~= "." then
            local path = dir .. "/" .. name
            files[#files + 1] = { time = tonumber(t), path = path,
                                  lines = lines_of(read_file(path)) }
        end
    end
    tbl_sort(files, function(a, b)
        if a.time ~= b.time then
            return a.time < b.time
        end
        return a.path < b.path
    end)
    return files
end


-- All lines of all output files for prefix, in batch order.
function Driver:output_lines(prefix)
    local out = {}
    for _, f in ipairs(self:output_files(prefix)) do
        for _, line in ipairs(f.lines) do
            out[#out + 1] = line
        end
    end
    return out
end


-- Lines of a file under <tmp> (or an absolute path); {} when missing.
function Driver:file_lines(name)
    local path = str_sub(name, 1, 1) == "/" and name or (self.dir .. "/" .. name)
    return lines_of(read_file(path))
end


-- The port of ember's HTTP server, from its start-up line (waits for it).
function Driver:http_port(timeout)
    local line = self:wait_for_log("HTTP API and web UI on http://", timeout or 20, { plain = true })
    return tonumber(str_match(line, "http://[^/]*:(%d+)/"))
end


-- Registers something with a close() method (a support.tcp server) to be
-- closed by stop().
function Driver:own(obj)
    self.servers = self.servers or {}
    self.servers[#self.servers + 1] = obj
    return obj
end


-- Runs `ember <args...>` to completion (check, version, a run that must
-- fail at start) with a deadline. Returns exit code, stdout, stderr.
function Driver:exec(args, timeout)
    if self.pid and not self:poll_exit() then
        error("ember is already running (pid " .. self.pid .. ")", 2)
    end
    self.argv = args
    self.pid, self.status, self.how = self:spawn(_M.bin, args), nil, nil
    local code = self:wait_exit(timeout or 10)
    return code, self:stdout(), self:log()
end


return _M
