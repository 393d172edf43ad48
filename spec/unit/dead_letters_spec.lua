-- ember.failures' dead letters: valid JSON whatever the bytes, rotation
-- at a size cap, and a batch written whole or not at all.

local H = require "spec.unit.support.helper"
local failures = require "ember.failures"
local cjson = require "cjson"

local dir

before_each(function()
    dir = H.tmpdir()
end)

after_each(function()
    H.rm_rf(dir)
    failures.MAX_BYTES = 64 * 1024 * 1024
end)

local function lines_of(path)
    local text = H.read(path) or ""
    local out = {}
    for line in text:gmatch("([^\n]*)\n") do
        out[#out + 1] = line
    end
    return out, text
end

describe("a dead-letter line", function()
    it("keeps a UTF-8 record as it is and escapes control characters", function()
        local line = failures.line("j", 5, "boom", "é\1\127\"\\/")
        assert.equal('{"job":"j","batch_time":5,"error":"boom","record":"é\\u0001\\u007f\\"\\\\/"}\n', line)
        assert.equal("é\1\127\"\\/", cjson.decode(line).record)
    end)

    it("base64-encodes a record that is not UTF-8, under record_base64", function()
        local line = failures.line("j", 5, "boom", "\255\000a")
        assert.equal('{"job":"j","batch_time":5,"error":"boom","record_base64":"/wBh"}\n', line)
    end)

    it("writes the stray bytes of an error as \\xNN and keeps its valid characters", function()
        local err = cjson.decode(failures.line("j", 5, "é \192\175 \237\160\128 x\255", "r")).error
        assert.equal("é \\xC0\\xAF \\xED\\xA0\\x80 x\\xFF", err)
        assert.is_true(failures.is_utf8(err))
    end)

    it("tells UTF-8 from overlongs, surrogates and truncated sequences", function()
        assert.is_true(failures.is_utf8("aé€𝄞"))
        for _, bad in ipairs({ "\192\128", "\237\160\128", "\226\130", "\244\144\128\128", "\255" }) do
            assert.is_false(failures.is_utf8(bad), bad)
        end
    end)
end)

describe("the dead-letter file", function()
    it("is a file its owner can read and write (mode 0644), not 0000", function()
        local f = failures.new("j", "dead_letter", { checkpoint_dir = dir })
        f:begin(1)
        f:add("e", "r")
        local _, _, io_err = f:finish()
        assert.is_nil(io_err)
        local st = require("posix.sys.stat").stat(dir .. "/j/dead_letter.jsonl")
        -- Under umask 022 at most; what matters is that the owner may write it
        -- again (root never notices, a container's user does).
        assert.equal(6 * 64, st.st_mode % 512 - st.st_mode % 64)
    end)

    it("is rotated past MAX_BYTES, keeping KEEP older files", function()
        failures.MAX_BYTES = 400
        local f = failures.new("j", "dead_letter", { checkpoint_dir = dir })
        for batch = 1, 12 do
            f:begin(batch)
            f:add("e", ("r"):rep(100))
            f:add("e", ("s"):rep(100))
            local n, _, io_err = f:finish()
            assert.equal(2, n)
            assert.is_nil(io_err)
        end
        local path = dir .. "/j/dead_letter.jsonl"
        local seen = 0
        for _, p in ipairs({ path, path .. ".1", path .. ".2", path .. ".3" }) do
            local lines, text = lines_of(p)
            assert.is_true(#text <= 400, p .. " holds " .. #text .. " bytes")
            assert.is_true(#lines >= 2, p)
            for _, l in ipairs(lines) do
                assert.equal("e", cjson.decode(l).error)
            end
            seen = seen + #lines
        end
        assert.is_nil(H.read(path .. ".4"))
        -- the newest batches are kept: 4 files, each batch's two lines together
        assert.equal(12, cjson.decode(lines_of(path)[#lines_of(path)]).batch_time)
        assert.is_true(seen >= 8)
    end)

    it("leaves the file as it was when the write fails, and says so", function()
        local f = failures.new("j", "dead_letter", { checkpoint_dir = dir, log = function() end })
        f:begin(1)
        f:add("e", "kept")
        f:finish()
        local path = dir .. "/j/dead_letter.jsonl"
        local before = H.read(path)
        -- /dev/full: every write fails with ENOSPC, like a full disk
        os.remove(path)
        assert(os.execute("ln -s /dev/full '" .. path .. "'"))
        f:begin(2)
        f:add("e", "lost")
        f:add("e", "lost too")
        local _, _, io_err = f:finish()
        assert.matches("^cannot write dead letters to .*dead_letter.jsonl: No space left on device %(2 "
                       .. "records not written; the batch is not acknowledged%)$", io_err)
        assert.equal('{"job":"j","batch_time":1,"error":"e","record":"kept"}\n', before)
    end)

    it("tells the host why the job stops", function()
        local told
        local f = failures.new("j", "dead_letter", { checkpoint_dir = "/proc/no/such", log = function() end,
                                                    stopped_by = function(why) told = why end })
        f:begin(1)
        f:add("e", "x")
        f:finish()
        assert.equal("dead letters unwritable", told)
    end)
end)
