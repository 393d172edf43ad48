-- ember.dead_letters: `ember dead-letters JOB` — lists a job's dead letters
-- and replays them.
--
--   ember dead-letters JOB                  one line per dead letter, oldest first
--   ember dead-letters JOB --json           the JSON lines themselves
--   ember dead-letters JOB --replay-to FILE appends each record as a line to
--       FILE (a folder a job's file source reads, for instance), then moves the
--       dead-letter files aside as dead_letter.jsonl.replayed-<time>, so a
--       second replay does not send them again
--
-- Files read: <checkpoint.dir>/<job>/dead_letter.jsonl.3 .. .1, then
-- dead_letter.jsonl (rotation keeps the newest in the plain name).

local failures = require "ember.failures"

local io_open = io.open
local os_rename = os.rename
local os_time = os.time
local tostring = tostring
local tonumber = tonumber
local ipairs = ipairs
local str_format = string.format
local str_byte = string.byte
local str_find = string.find
local str_gsub = string.gsub
local tbl_concat = table.concat
local bit = require "bit"
local band, rshift, lshift, bor = bit.band, bit.rshift, bit.lshift, bit.bor

local _M = {}

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64V = {}
for i = 1, 64 do B64V[str_byte(B64, i)] = i - 1 end

function _M.unbase64(s)
    local out, acc, bits = {}, 0, 0
    for i = 1, #s do
        local v = B64V[str_byte(s, i)]
        if v then
            acc = bor(lshift(acc, 6), v)
            bits = bits + 6
            if bits >= 8 then
                bits = bits - 8
                out[#out + 1] = string.char(band(rshift(acc, bits), 0xFF))
            end
        end
    end
    return tbl_concat(out)
end

-- A small JSON reader for the lines failures.lua writes: one flat object
-- of strings and integers. Returns the table, or nil and why.
local ESC = { ['"'] = '"', ['\\'] = '\\', ['/'] = '/', b = '\b', f = '\f', n = '\n', r = '\r', t = '\t' }

local function utf8_char(cp)
    if cp < 0x80 then return string.char(cp) end
    if cp < 0x800 then
        return string.char(bor(0xC0, rshift(cp, 6)), bor(0x80, band(cp, 0x3F)))
    end
    if cp < 0x10000 then
        return string.char(bor(0xE0, rshift(cp, 12)), bor(0x80, band(rshift(cp, 6), 0x3F)),
                           bor(0x80, band(cp, 0x3F)))
    end
    return string.char(bor(0xF0, rshift(cp, 18)), bor(0x80, band(rshift(cp, 12), 0x3F)),
                       bor(0x80, band(rshift(cp, 6), 0x3F)), bor(0x80, band(cp, 0x3F)))
end

function _M.decode(line)
    local t, pos = {}, 1
    local function skip() pos = (str_find(line, "[^ \t]", pos)) or #line + 1 end
    local function str()
        if line:sub(pos, pos) ~= '"' then return nil end
        pos = pos + 1
        local buf = {}
        while true do
            local a, b = str_find(line, '["\\]', pos)
            if not a then return nil end
            buf[#buf + 1] = line:sub(pos, a - 1)
            if line:sub(a, a) == '"' then pos = a + 1 break end
            local c = line:sub(a + 1, a + 1)
            if c == "u" then
                local cp = tonumber(line:sub(a + 2, a + 5), 16)
                if not cp then return nil end
                pos = a + 6
                if cp >= 0xD800 and cp <= 0xDBFF and line:sub(pos, pos + 1) == "\\u" then
                    local lo = tonumber(line:sub(pos + 2, pos + 5), 16)
                    if lo and lo >= 0xDC00 and lo <= 0xDFFF then
                        cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
                        pos = pos + 6
                    end
                end
                buf[#buf + 1] = utf8_char(cp)
            elseif ESC[c] then
                buf[#buf + 1] = ESC[c]
                pos = a + 2
            else
                return nil
            end
        end
        return tbl_concat(buf)
    end
    skip()
    if line:sub(pos, pos) ~= "{" then return nil, "not a JSON object" end
    pos = pos + 1
    while true do
        skip()
        if line:sub(pos, pos) == "}" then return t end
        local k = str()
        if not k then return nil, "bad key at byte " .. pos end
        skip()
        if line:sub(pos, pos) ~= ":" then return nil, "expected ':' at byte " .. pos end
        pos = pos + 1
        skip()
        local v
        if line:sub(pos, pos) == '"' then
            v = str()
            if not v then return nil, "bad string at byte " .. pos end
        else
            local num = line:match("^%-?%d+", pos)
            if not num then return nil, "bad value at byte " .. pos end
            v = tonumber(num)
            pos = pos + #num
        end
        t[k] = v
        skip()
        local c = line:sub(pos, pos)
        pos = pos + 1
        if c == "}" then return t end
        if c ~= "," then return nil, "expected ',' or '}' at byte " .. (pos - 1) end
    end
end

-- The files of a job's dead letters, oldest first, that exist.
function _M.files(dir, job)
    local base = dir .. "/" .. job .. "/dead_letter.jsonl"
    local out = {}
    for i = failures.KEEP, 1, -1 do
        local f = io_open(base .. "." .. i, "rb")
        if f then f:close() out[#out + 1] = base .. "." .. i end
    end
    local f = io_open(base, "rb")
    if f then f:close() out[#out + 1] = base end
    return out
end

-- Every dead letter: { line=, file=, letter= (decoded) or err= }.
function _M.read(dir, job)
    local out = {}
    for _, path in ipairs(_M.files(dir, job)) do
        local n = 0
        for line in io.lines(path) do
            n = n + 1
            local letter, err = _M.decode(line)
            out[#out + 1] = { line = line, file = path, lineno = n, letter = letter, err = err }
        end
    end
    return out
end

-- The record of a decoded dead letter, as bytes.
function _M.record(letter)
    if letter.record_base64 then
        return _M.unbase64(letter.record_base64)
    end
    return letter.record
end

local function say(out, ...)
    out:write(str_format(...), "\n")
end

-- The command: returns an exit code.
function _M.main(dir, job, mode, target, out, err)
    out, err = out or io.stdout, err or io.stderr
    local all = _M.read(dir, job)
    if #all == 0 then
        say(err, "%s/%s: no dead letters", dir, job)
        return mode == "replay" and 1 or 0
    end
    if mode == "json" then
        for _, d in ipairs(all) do out:write(d.line, "\n") end
        return 0
    end
    if mode == "list" then
        for _, d in ipairs(all) do
            if d.letter then
                local rec = _M.record(d.letter)
                say(out, "%s\t%s\t%s%s", tostring(d.letter.batch_time), failures.excerpt(d.letter.error),
                    d.letter.record_base64 and "(base64) " or "",
                    failures.excerpt(failures.clean_utf8(rec)))
            else
                say(out, "%s:%d: unreadable: %s", d.file, d.lineno, d.err)
            end
        end
        say(err, "%d dead letters in %d files", #all, #_M.files(dir, job))
        return 0
    end
    -- replay
    local lines, skipped = {}, 0
    for _, d in ipairs(all) do
        local rec = d.letter and _M.record(d.letter)
        if not rec or str_find(rec, "\n", 1, true) or (d.letter.record or ""):find("^<batch of") then
            skipped = skipped + 1
            say(err, "%s:%d: not replayed: %s", d.file, d.lineno,
                not rec and ("unreadable: " .. tostring(d.err)) or
                str_find(rec, "\n", 1, true) and "the record holds a newline" or "a whole batch, not a record")
        else
            lines[#lines + 1] = rec
        end
    end
    local f, ferr = io_open(target, "ab")
    if not f then
        say(err, "cannot open %s: %s", target, tostring(ferr))
        return 1
    end
    local ok, werr = f:write(#lines > 0 and (tbl_concat(lines, "\n") .. "\n") or "")
    local cok, cerr = f:close()
    if not ok or not cok then
        say(err, "cannot write %s: %s; the dead letters stay where they are", target,
            tostring(werr or cerr))
        return 1
    end
    local stamp = os_time()
    for _, path in ipairs(_M.files(dir, job)) do
        os_rename(path, path .. ".replayed-" .. stamp)
    end
    say(err, "%d records replayed to %s, %d not replayed; the dead-letter files were moved aside "
        .. "(*.replayed-%d)", #lines, target, skipped, stamp)
    return skipped > 0 and 3 or 0
end

return _M
