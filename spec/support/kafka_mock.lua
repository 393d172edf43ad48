-- support.kafka_mock: a Kafka cluster for the specs — librdkafka's own mock
-- cluster wrapped by tools/kafka-mock, listening on ephemeral loopback
-- ports — and kcat as the independent client that writes input and reads
-- output.
--
--   local kafka_mock = require "support.kafka_mock"
--   local k = kafka_mock.start { topics = { "in:3", "out:1" } }   -- brokers = N
--   k.bootstrap                                   -- "127.0.0.1:port"
--   k:produce("in", { "a", "b" })                 -- or { { key = "k", value = "v" } };
--                                                 -- opts.partition, opts.headers = { "h=v" }
--   k:consume("out")                              -- { { key=, value=, partition=, offset= } ... }
--   k:values("out")                               -- just the values, in topic order per partition
--   k:command("down 1")                           -- a broker down (or "up 1"); raises unless "ok"
--   k:stop()                                      -- in teardown; idempotent
--
-- The 2.0.2 mock cannot create topics on request (name them at start), keeps
-- only about 5 MiB per partition, and a consumer group takes about 3 s to
-- form. kafka_mock.CLIENT is the librdkafka settings a job's kafka source
-- uses against it (as Lua table fields, for job templates): a short fetch
-- wait, and session and reconnect times short enough that a restarted or
-- killed member, or a broker back up, is noticed within seconds.

local unistd = require "posix.unistd"
local wait = require "posix.sys.wait"
local psignal = require "posix.signal"
local ppoll = require "posix.poll"
local stdlib = require "posix.stdlib"
local driver = require "support.driver"

local error = error
local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local io_open = io.open
local io_popen = io.popen
local os_getenv = os.getenv
local str_format = string.format
local str_find = string.find
local str_match = string.match
local tbl_concat = table.concat
local now = driver.now


local _M = {}

_M.bin = driver.root .. "/tools/kafka-mock"

_M.CLIENT = '["kafka.fetch.wait.max.ms"] = 10, ["kafka.session.timeout.ms"] = 3000, '
    .. '["kafka.heartbeat.interval.ms"] = 500, ["kafka.reconnect.backoff.max.ms"] = 1000'

local Mock = {}
Mock.__index = Mock


local live = setmetatable({}, { __mode = "k" })
_M._sentinel = newproxy(true)
getmetatable(_M._sentinel).__gc = function()
    for m in pairs(live) do
        pcall(m.stop, m)
    end
end


local function shell_quote(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end


local function tmpdir()
    local base = os_getenv("TMPDIR")
    if not base or base == "" then
        base = "/tmp"
    end
    return assert(stdlib.mkdtemp(base .. "/ember-kafka-XXXXXX"))
end


-- Starts the mock; returns once it printed its bootstrap address.
function _M.start(opts)
    opts = opts or {}
    local argv = { "--brokers", tostring(opts.brokers or 1) }
    for _, t in ipairs(opts.topics or {}) do
        argv[#argv + 1] = "--topic"
        argv[#argv + 1] = t
    end
    local in_r, in_w = assert(unistd.pipe())
    local out_r, out_w = assert(unistd.pipe())
    local dir = tmpdir()
    io.stdout:flush()
    io.stderr:flush()
    local pid = assert(unistd.fork())
    if pid == 0 then
        pcall(function()
            local fcntl = require "posix.fcntl"
            local errf = fcntl.open(dir .. "/stderr", fcntl.O_WRONLY + fcntl.O_CREAT, 420)
            unistd.dup2(in_r, 0)
            unistd.dup2(out_w, 1)
            if errf then
                unistd.dup2(errf, 2)
            end
            for fd = 3, 1023 do
                unistd.close(fd)
            end
            unistd.exec(_M.bin, argv)
        end)
        unistd._exit(127)
    end
    unistd.close(in_r)
    unistd.close(out_w)
    local self = setmetatable({ pid = pid, stdin = in_w, stdout = out_r, buf = "", dir = dir },
                              Mock)
    live[self] = true
    local line = self:read_line(10, "the mock's bootstrap address")
    self.bootstrap = str_match(line, "^BOOTSTRAP=(%S+)$")
    if not self.bootstrap then
        self:stop()
        error("kafka-mock printed '" .. line .. "' instead of BOOTSTRAP=...", 2)
    end
    return self
end


-- One line of the mock's stdout, waiting at most timeout seconds.
function Mock:read_line(timeout, what)
    local deadline = now() + timeout
    while true do
        local line, rest = str_match(self.buf, "^([^\n]*)\n(.*)$")
        if line then
            self.buf = rest
            return line
        end
        local left = deadline - now()
        if left <= 0 then
            error("timed out after " .. timeout .. "s waiting for " .. what .. "\n"
                  .. self:stderr(), 2)
        end
        local ready = ppoll.rpoll(self.stdout, math.ceil(left * 1000))
        if ready == 1 then
            local data = unistd.read(self.stdout, 4096)
            if not data or data == "" then
                error("kafka-mock exited while waiting for " .. what .. "\n" .. self:stderr(), 2)
            end
            self.buf = self.buf .. data
        end
    end
end


function Mock:stderr()
    local f = io_open(self.dir .. "/stderr", "rb")
    local s = f and f:read("*a") or ""
    if f then
        f:close()
    end
    return "--- kafka-mock stderr ---\n" .. s
end


-- Sends one stdin command ("down 1", "up 1", "leader t 0 2") and waits
-- for its answer; raises unless it is "ok".
function Mock:command(line)
    assert(unistd.write(self.stdin, line .. "\n"))
    local answer = self:read_line(10, "the answer to '" .. line .. "'")
    if answer ~= "ok" then
        error("kafka-mock: '" .. line .. "': " .. answer, 2)
    end
end


-- Closes its stdin (it exits on that), then TERM, then KILL, with deadlines.
function Mock:stop()
    if not self.pid then
        return
    end
    pcall(unistd.close, self.stdin)
    local deadline = now() + 5
    local reaped = false
    local signalled = false
    while now() < deadline do
        local pid = wait.wait(self.pid, wait.WNOHANG)
        if pid == self.pid or pid == nil then
            reaped = true
            break
        end
        if not signalled and now() > deadline - 4 then
            psignal.kill(self.pid, psignal.SIGTERM)
            signalled = true
        end
        driver.sleep(0.02)
    end
    if not reaped then
        psignal.kill(self.pid, psignal.SIGKILL)
        wait.wait(self.pid)
    end
    pcall(unistd.close, self.stdout)
    os.execute("rm -rf " .. shell_quote(self.dir))
    self.pid = nil
    live[self] = nil
end


-- Writes records to topic with kcat. records: strings, or { key=, value= }
-- tables (values and keys must not hold tabs or newlines). opts.partition
-- pins them to one partition; otherwise keyless records are spread one by
-- one over the partitions.
function Mock:produce(topic, records, opts)
    opts = opts or {}
    local path = self.dir .. "/produce.txt"
    local f = assert(io_open(path, "wb"))
    local keyed = false
    for _, r in ipairs(records) do
        if type(r) == "table" then
            keyed = true
            f:write(r.key or "", "\t", r.value, "\n")
        else
            f:write(r, "\n")
        end
    end
    f:close()
    return self:produce_file(topic, path, { partition = opts.partition, keyed = keyed,
                                            headers = opts.headers })
end


-- Writes every line of a file as one record (opts.keyed: "key\tvalue").
function Mock:produce_file(topic, path, opts)
    opts = opts or {}
    local cmd = { "timeout 60 kcat -b", shell_quote(self.bootstrap), "-P -t", shell_quote(topic),
                  "-X sticky.partitioning.linger.ms=0 -X linger.ms=5 -X batch.num.messages=500" }
    if opts.partition then
        cmd[#cmd + 1] = "-p " .. tonumber(opts.partition)
    end
    if opts.keyed then
        cmd[#cmd + 1] = "-K '\t'"
    end
    for _, h in ipairs(opts.headers or {}) do       -- "name=value", on every record
        cmd[#cmd + 1] = "-H " .. shell_quote(h)
    end
    cmd[#cmd + 1] = "-l " .. shell_quote(path) .. " 2>&1"
    local p = io_popen(tbl_concat(cmd, " "))
    local out = p:read("*a")
    local ok, _, code = p:close()
    if not ok and code ~= 0 then
        error("kcat could not produce to " .. topic .. ": " .. out, 2)
    end
end


-- Every record of topic, read with kcat from the beginning to the end.
function Mock:consume(topic)
    local cmd = "timeout 30 kcat -b " .. shell_quote(self.bootstrap) .. " -C -t "
                .. shell_quote(topic) .. " -o beginning -e -q -f '%k\\t%p\\t%o\\t%s\\n' 2>&1"
    local p = io_popen(cmd)
    local out = p:read("*a")
    p:close()
    local got = {}
    for line in out:gmatch("([^\n]*)\n") do
        local k, part, off, v = str_match(line, "^([^\t]*)\t(%d+)\t(%d+)\t(.*)$")
        if not k then
            error("kcat: unexpected output reading " .. topic .. ": " .. line, 2)
        end
        got[#got + 1] = { key = k ~= "" and k or nil, partition = tonumber(part),
                          offset = tonumber(off), value = v }
    end
    return got
end


function Mock:values(topic)
    local out = {}
    for i, r in ipairs(self:consume(topic)) do
        out[i] = r.value
    end
    return out
end


-- VmRSS of a process, in KiB.
function _M.rss_kib(pid)
    local f = io_open("/proc/" .. pid .. "/status", "rb")
    if not f then
        return nil
    end
    local s = f:read("*a")
    f:close()
    return tonumber(str_match(s, "VmRSS:%s*(%d+)"))
end


-- { value = count } of a list, and the values seen more than once.
function _M.tally(list)
    local count, dups = {}, 0
    for _, v in ipairs(list) do
        if count[v] then
            dups = dups + 1
        end
        count[v] = (count[v] or 0) + 1
    end
    return count, dups
end


-- Compares what arrived with what was expected as sets: returns the
-- missing ones, the ones nobody sent, and the number of duplicates.
function _M.diff(expected, got)
    local want = _M.tally(expected)
    local have, dups = _M.tally(got)
    local missing, invented = {}, {}
    for v in pairs(want) do
        if not have[v] then
            missing[#missing + 1] = v
        end
    end
    for v in pairs(have) do
        if not want[v] then
            invented[#invented + 1] = v
        end
    end
    table.sort(missing)
    table.sort(invented)
    return missing, invented, dups
end


function _M.describe_diff(missing, invented, dups)
    local function head(t)
        local s = {}
        for i = 1, math.min(#t, 5) do
            s[i] = t[i]
        end
        return tbl_concat(s, ", ") .. (#t > 5 and ", ..." or "")
    end
    return str_format("%d missing (%s), %d nobody sent (%s), %d duplicates", #missing,
                      head(missing), #invented, head(invented), dups)
end


return _M
