-- Isolation: dead letters stay valid JSON whatever the records hold, and a
-- full disk under them never leaves a torn line; the job stops saying that
-- its dead letters could not be written, and a healthy job stays on time.

local driver = require "support.driver"
local iso = require "support.isolation"
local small_disk = require "support.small_disk"
local failures = require "ember.failures"
local cjson = require "cjson"

local JOB = [[
local ember = require "ember"
local job = ember.job { name = "dl", batch_interval = "500ms", on_error = "dead_letter" }
job:file { path = {{dir}}, start = "beginning", poll_interval = "50ms" }
   :map(function(line) error("refused " .. line) end)
   :foreach_batch(function(records) end)
return job
]]

-- Every line of the file: valid UTF-8 JSON, whole; the decoded objects.
local function read_dead_letters(path)
    local f = io.open(path, "rb")
    if not f then return {} end
    local text = f:read("*a")
    f:close()
    assert.is_true(text == "" or text:sub(-1) == "\n", "the file ends in a torn line")
    local out = {}
    for line in text:gmatch("([^\n]*)\n") do
        assert.is_true(failures.is_utf8(line), "not UTF-8: " .. line)
        assert.is_nil(line:find("[%z\1-\31]"), "a raw control character: " .. line)
        out[#out + 1] = cjson.decode(line)
    end
    return out
end

local function unbase64(s)
    local B = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    s = s:gsub("[^%w%+/=]", "")
    return (s:gsub(".", function(x)
        if x == "=" then return "" end
        local r, f = "", (B:find(x, 1, true) - 1)
        for i = 6, 1, -1 do r = r .. (f % 2 ^ i - f % 2 ^ (i - 1) > 0 and "1" or "0") end
        return r
    end):gsub("%d%d%d?%d?%d?%d?%d?%d?", function(x)
        if #x ~= 8 then return "" end
        local c = 0
        for i = 1, 8 do c = c + (x:sub(i, i) == "1" and 2 ^ (8 - i) or 0) end
        return string.char(c)
    end))
end

describe("dead letters", function()
    local d, disk

    before_each(function()
        d = driver.new()
        iso.write_healthy(d)
        driver.mkdir(d:path("in"))
    end)

    after_each(function()
        if disk then disk:unmount() disk = nil end
        d:stop()
    end)

    local AGAIN = [[
local ember = require "ember"
local job = ember.job { name = "again", batch_interval = "500ms" }
job:file { path = {{dir}}, start = "beginning", poll_interval = "50ms" }
   :foreach_batch(function(records)
       local f = assert(io.open({{out}}, "ab"))
       for _, r in ipairs(records) do f:write(r, "\n") end
       f:close()
   end)
return job
]]

    local function start(with_again)
        d:write_job("dl.lua", driver.render(JOB, { dir = driver.quote(d:path("in")) }))
        if with_again then
            driver.mkdir(d:path("replay"))
            d:write_job("again.lua", driver.render(AGAIN, { dir = driver.quote(d:path("replay")),
                                                            out = driver.quote(d:path("again.out")) }))
        end
        d:start { conf = iso.conf() }
        d:wait_for_log("running " .. (with_again and 3 or 2) .. " jobs", 30)
    end

    local function feed(name, lines)
        local f = assert(io.open(d:path("in/" .. name), "ab"))
        f:write(table.concat(lines, "\n"), "\n")
        f:close()
    end

    it("are valid JSON lines for records that are not UTF-8 or hold control characters, listed "
       .. "and replayed by ember dead-letters", function()
        start(true)
        local records = { "plain", "caf\195\169", "bad \255\254 bytes", "ctl \1\2\27 \127 end",
                          "quote \" back \\ slash /" }
        feed("a.txt", records)
        local path = d.checkpoint_dir .. "/dl/dead_letter.jsonl"
        local got
        d:wait_until(function()
            got = read_dead_letters(path)
            return #got == #records, #got .. " dead letters"
        end, 30, 0.1, #records .. " dead letters")
        for i, rec in ipairs(records) do
            local dl = got[i]
            assert.equal("dl", dl.job)
            if failures.is_utf8(rec) then
                assert.equal(rec, dl.record)
                assert.is_nil(dl.record_base64)
            else
                assert.is_nil(dl.record)
                assert.equal(rec, unbase64(dl.record_base64))
            end
            assert.truthy(dl.error:find("refused ", 1, true), dl.error)
        end
        assert.truthy(got[3].error:find("bad \\xFF\\xFE bytes", 1, true), got[3].error)

        -- `ember dead-letters dl` lists them; --replay-to feeds them to a job
        local cli = driver.new()
        local code, out, err = cli:exec({ "dead-letters", "--conf", "checkpoint.dir=" .. d.checkpoint_dir,
                                          "dl" }, 30)
        assert.equal(0, code, err)
        local listed = driver.lines(out)
        assert.equal(#records, #listed)
        assert.truthy(listed[3]:find("(base64) bad \\xFF\\xFE bytes", 1, true), listed[3])
        assert.truthy(err:find(#records .. " dead letters in 1 files", 1, true), err)
        code, out, err = cli:exec({ "dead-letters", "--conf", "checkpoint.dir=" .. d.checkpoint_dir,
                                    "dl", "--replay-to", d:path("replay/dl.txt") }, 30)
        assert.equal(0, code, err)
        assert.truthy(err:find(#records .. " records replayed to", 1, true), err)
        local again
        d:wait_until(function()
            again = d:file_lines("again.out")
            return #again == #records, #again .. " replayed records"
        end, 30, 0.1, "the replayed records in the job that reads them")
        assert.same(records, again)
        -- moved aside: a second replay finds none
        code, _, err = cli:exec({ "dead-letters", "--conf", "checkpoint.dir=" .. d.checkpoint_dir,
                                  "dl", "--replay-to", d:path("replay/dl.txt") }, 30)
        assert.equal(1, code)
        assert.truthy(err:find("no dead letters", 1, true), err)
        cli:stop()
    end)

    it("on a full disk, are whole lines or none, and the job stops saying why", function()
        disk = small_disk.mount(d.checkpoint_dir, "2m")
        start()
        feed("a.txt", { "first" })
        local path = d.checkpoint_dir .. "/dl/dead_letter.jsonl"
        d:wait_until(function() return #read_dead_letters(path) == 1 end, 30, 0.1, "the first dead letter")
        local mark = d:log_mark()
        disk:fill()
        -- a batch of many long dead letters: the write cannot fit
        local many = {}
        for i = 1, 400 do many[i] = ("x"):rep(200) .. i end
        feed("b.txt", many)
        local line = d:wait_for_log("%[dl%] job stopped %(dead letters unwritable%): cannot write dead "
                                    .. "letters to .*: No space left on device %(400 records not written",
                                    30, { from = mark })
        assert.is_nil(line:find("on_error = fail", 1, true))
        local got = read_dead_letters(path)
        assert.equal(1, #got)
        assert.equal("first", got[1].record)
        local delays = iso.wait_healthy_batches(d, 8, mark, 60)
        assert.is_true(iso.p95(delays) < iso.INTERVAL_MS, "healthy p95 " .. iso.p95(delays) .. " ms")
        print(string.format("dead letters on a full disk: healthy p95 %d ms over %d batches",
                            iso.p95(delays), #delays))
    end)
end)
