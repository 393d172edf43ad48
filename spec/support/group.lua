-- support.group: several ember drivers sharing one broker group, and the
-- membership changes the scale-out specs put them through.
--
--   local group = require "support.group"
--   local g = group.new {
--       job = function(out) return "<job source writing value TAB batch time to out>" end,
--       produce = function(values) ... end,    -- into the shared queue / topic
--       ready = "assigned events%[",           -- log pattern: a member takes part
--       conf = { ... },                        -- driver configuration
--   }
--   local m = g:add()                          -- a new member, started, ready
--   local r = g:round("kill", { victim = m, n = 1200 })
--   g:stop()                                   -- in teardown
--
-- Each member's job appends "<value>\t<batch time ms>" per record to its
-- own file; once the round makes it slow (a file <out>.slow: group.SLOW,
-- for the job templates) it then sleeps 300 ms, an output that takes time,
-- so a kill right after a write lands before the batch is acknowledged. A round produces n records, makes one membership change
-- (kill -9 of the victim, a graceful stop of it, or a new member joining)
-- while they are being read, produces a probe of `probe` more right after
-- it, and waits until every record of the round is at some member. It
-- returns what the figures in docs/scaling.md are made of: records lost,
-- duplicated, and the seconds from the change until the last record of
-- the round was read (a round that cannot read them all fails at its
-- deadline, naming how many are missing).

local driver = require "support.driver"
local kafka_mock = require "support.kafka_mock"
local ptime = require "posix.time"
local luassert = require "luassert"

local ipairs = ipairs
local pairs = pairs
local setmetatable = setmetatable
local tonumber = tonumber
local str_format = string.format
local str_match = string.match


local _M = {}

local Group = {}
Group.__index = Group


-- Wall-clock milliseconds, comparable with a batch's time.
local function wall_ms()
    local t = ptime.clock_gettime(ptime.CLOCK_REALTIME)
    return t.tv_sec * 1000 + math.floor(t.tv_nsec / 1e6)
end
_M.wall_ms = wall_ms


function _M.new(opts)
    return setmetatable({ opts = opts, members = {}, rounds = 0 }, Group)
end


-- Starts one more member and waits until it takes part (opts.ready in its
-- log) unless wait is false.
function Group:add(wait)
    local d = driver.new()
    d.out = d:path("out")
    d:write_job("member.lua", self.opts.job(d.out))
    d:start { conf = driver.conf(self.opts.conf) }
    self.members[#self.members + 1] = d
    d.index = #self.members
    if wait ~= false then
        d:wait_for_log(self.opts.ready, 60)
    end
    return d
end


-- { value = true } of the members' files, and every (value, batch time)
-- with the member that read it.
function Group:read_all()
    local got = {}
    for _, d in ipairs(self.members) do
        for _, line in ipairs(d:file_lines("out")) do
            local v, t = str_match(line, "^([^\t]*)\t(%d+)$")
            got[#got + 1] = { value = v or line, time = tonumber(t) or 0, member = d }
        end
    end
    return got
end


-- Records of one round: prefix .. i.
local function values(prefix, from, to)
    local t = {}
    for i = from, to do
        t[#t + 1] = prefix .. i
    end
    return t
end


-- Runs one round. kind: "spread" (no change), "kill", "stop" or "join".
-- opts.victim (kill, stop), opts.n records before the change,
-- opts.probe after it, opts.after: records the victim must have read of
-- this round before the change (default n / 10), opts.timeout for the
-- whole round.
function Group:round(kind, opts)
    self.rounds = self.rounds + 1
    local prefix = str_format("r%d%s-", self.rounds, kind)
    local n, probe = opts.n or 1200, opts.probe or 120
    local expected = values(prefix, 1, n)
    for _, v in ipairs(values(prefix, n + 1, n + probe)) do
        expected[#expected + 1] = v
    end
    local function of_round(d)
        local c = 0
        for _, line in ipairs(d:file_lines("out")) do
            if line:sub(1, #prefix) == prefix then
                c = c + 1
            end
        end
        return c
    end
    local victim, t_change, joined = opts.victim, nil, nil
    if kind == "kill" then
        driver.write_file(victim.out .. ".slow", "")
    end
    self.opts.produce(values(prefix, 1, n))
    if kind ~= "spread" then
        -- change the membership while the round is being read
        local subject = victim
        for _, d in ipairs(self.members) do
            if not subject and d:running() then
                subject = d
            end
        end
        local want = opts.after or (kind == "kill" and 1 or math.floor(n / 10))
        subject:wait_until(function()
            local c = of_round(subject)
            return c >= want, c .. " records of the round read"
        end, 60, 0.02, "member " .. subject.index .. " to read " .. want .. " records first")
        if kind == "kill" then
            -- right after the victim's output wrote a batch: its job now
            -- sleeps 300 ms before the batch is done, so the kill lands
            -- between the output and the commit (or ack)
            local before = #subject:file_lines("out")
            subject:wait_until(function()
                return #subject:file_lines("out") > before
            end, 30, 0.005, "member " .. subject.index .. " to write another batch")
        end
    end
    local change_wall = wall_ms()
    t_change = driver.now()
    if kind == "kill" then
        victim:signal("KILL")
        victim:wait_exit(10)
    elseif kind == "stop" then
        victim:signal("TERM")
    elseif kind == "join" then
        joined = self:add(false)
    end
    self.opts.produce(values(prefix, n + 1, n + probe))
    local got
    local want = {}
    for _, v in ipairs(expected) do
        want[v] = true
    end
    local deadline_what = "every record of round " .. self.rounds .. " (" .. kind .. ")"
    driver.wait_until(function()
        local seen, missing = {}, 0
        got = self:read_all()
        for _, r in ipairs(got) do
            if want[r.value] then
                seen[r.value] = true
            end
        end
        for v in pairs(want) do
            if not seen[v] then
                missing = missing + 1
            end
        end
        return missing == 0, missing .. " of " .. #expected .. " not read yet"
    end, opts.timeout or 60, 0.05, deadline_what, function()
        local tails = {}
        for _, d in ipairs(self.members) do
            tails[#tails + 1] = "member " .. d.index .. ":\n" .. d:log_tail(15)
        end
        return table.concat(tails, "\n")
    end)
    local seconds = driver.now() - t_change
    if kind == "stop" then
        luassert.equal(0, victim:wait_exit(30))
    end
    -- What the victim processed but never acknowledged comes again later
    -- (Redis: after claim_idle): wait until the broker holds nothing
    -- unacknowledged, then count again.
    if self.opts.settle then
        self.opts.settle()
        got = self:read_all()
    end
    local settled = driver.now() - t_change
    -- the records of the victim's last batch (the one it was in when it died)
    local victim_last, last_time = 0, -1
    for _, r in ipairs(got) do
        if r.member == victim and r.time > last_time then
            last_time = r.time
        end
    end
    for _, r in ipairs(got) do
        if r.member == victim and r.time == last_time then
            victim_last = victim_last + 1
        end
    end
    -- The records of the victim's batches after its last commit the broker
    -- took: a batch whose commit was refused ("cannot commit", logged before
    -- the batch's own line) is read again by the partition's next owner
    -- too, as is the batch it died in (never logged). Eager and a mock in a
    -- rebalance refuse commits that a broker would take.
    local victim_uncommitted = victim_last
    if victim then
        local committed_time, refused = -1, false
        for line in victim:log():gmatch("[^\n]+") do
            if line:find("cannot commit", 1, true) then
                refused = true
            else
                local t = line:match("%] batch (%d+): %d+ records?")
                if t then
                    if not refused then committed_time = tonumber(t) end
                    refused = false
                end
            end
        end
        victim_uncommitted = 0
        for _, r in ipairs(got) do
            if r.member == victim and r.time > committed_time then
                victim_uncommitted = victim_uncommitted + 1
            end
        end
    end
    local mine, per_member, victim_recent = {}, {}, 0
    for _, r in ipairs(got) do
        if want[r.value] then
            mine[#mine + 1] = r.value
            per_member[r.member.index] = (per_member[r.member.index] or 0) + 1
            if r.member == victim and r.time >= change_wall - (opts.window_ms or 2500) then
                victim_recent = victim_recent + 1
            end
        end
    end
    local missing, invented, dups = kafka_mock.diff(expected, mine)
    return {
        kind = kind, lost = #missing, invented = #invented, duplicated = dups,
        seconds = seconds, per_member = per_member, victim_recent = victim_recent,
        victim_last = victim_last, victim_uncommitted = victim_uncommitted, settled = settled,
        joined = joined, records = #expected,
        text = str_format("%s: %d records, %d lost, %d duplicated, every record read %.1f s "
                          .. "after the change; per member %s%s", kind, #expected, #missing, dups,
                          seconds, _M.show(per_member),
                          victim and str_format("; the victim's last batch held %d, its "
                                                .. "batches after its last commit %d",
                                                victim_last, victim_uncommitted)
                          or "") .. str_format("; settled after %.1f s", settled),
    }
end


function _M.show(per_member)
    local parts = {}
    for i = 1, 8 do
        if per_member[i] then
            parts[#parts + 1] = i .. ":" .. per_member[i]
        end
    end
    return table.concat(parts, " ")
end


-- Kills every member still running and removes their folders.
function Group:stop()
    for _, d in ipairs(self.members) do
        pcall(d.stop, d)
    end
end


-- Prints a round's figures (EMBER_SCALE_FIGURES=1), for docs/scaling.md.
function _M.report(label, r)
    if os.getenv("EMBER_SCALE_FIGURES") == "1" then
        io.stderr:write(str_format("\n[figures] %s %s\n", label, r.text))
    end
end

_M.values = values

-- Lua for a job's foreach_batch, after it wrote a non-empty batch.
_M.SLOW_HEAD = [[local ffi = require "ffi"
pcall(ffi.cdef, "int usleep(unsigned int usec);")
]]
_M.SLOW = 'do local s = io.open({{out}} .. ".slow") if s then s:close() ffi.C.usleep(300000) end end'

return _M
