-- format = "json": a source's elements arrive decoded by ember.json; a
-- record that is not JSON follows the job's on_error policy with its text.

local H = require "spec.unit.support.helper"
local cjson = require "cjson"


local dir, sink

local function job(policy, body, fields)
    local desc, err = H.load(dir, [[
local ember = require "ember"
local sink = require "test_sink"
local job = ember.job { name = "j", on_error = "]] .. policy .. [[" }
local src = job:socket { port = 1, format = "json"]] .. (fields or "") .. [[ }
]] .. body .. "\nreturn job\n", "j")
    assert(desc, err)
    return desc
end

before_each(function()
    dir = H.tmpdir()
    sink = H.sink()
end)

after_each(function()
    H.rm_rf(dir)
end)


describe("format = \"json\"", function()
    it("hands each record decoded to the job's functions", function()
        local desc = job("fail", [[
src:filter(function(p) return p.pm25 ~= nil end)
   :map(function(p) return p.device, p.pm25 end)
   :reduce_by_key(math.max)
   :foreach_batch(sink.collect)]])
        local ok, failed = H.run(desc, 1000, {
            '{"device":"a","pm25":12.5}', '{"device":"b","pm25":3}',
            '{"device":"a","pm25":40,"extra":[1,2]}', '{"device":"c"}', '{"device":"b","pm25":null}',
        })
        assert.is_true(ok)
        assert.equal(0, failed)
        local got = {}
        for _, pair in ipairs(sink.last()) do
            got[pair[1]] = pair[2]
        end
        assert.same({ a = 40, b = 3 }, got)
    end)

    it("sets a record that is not JSON aside by on_error, with its text, and goes on", function()
        local desc = job("dead_letter", [[src:map(function(p) return p.v end):foreach_batch(sink.collect)]])
        local ok, failed, err = H.run(desc, 1000, { '{"v":1}', '{"v":2', 'null', '{"v":3}' })
        assert.is_true(ok)
        assert.equal(2, failed)
        assert.equal("json: unexpected end at byte 7", err)
        assert.same({ 1, 3 }, sink.last())
        local lines = {}
        for line in H.read(dir .. "/checkpoint/j/dead_letter.jsonl"):gmatch("[^\n]+") do
            lines[#lines + 1] = cjson.decode(line)
        end
        assert.equal(2, #lines)
        assert.equal('{"v":2', lines[1].record)
        assert.equal("json: unexpected end at byte 7", lines[1].error)
        assert.equal("null", lines[2].record)
        assert.equal("json: the record is null", lines[2].error)
    end)

    it("with fields = {...} hands each record with only those fields", function()
        local desc = job("fail", [[
src:map(function(p)
       local names = {}
       for k in pairs(p) do names[#names + 1] = k end
       table.sort(names)
       return table.concat(names, ","), 1
   end)
   :reduce_by_key(function(a, b) return a + b end)
   :foreach_batch(sink.collect)]], ', fields = { "device", "pm25" }')
        local ok, failed = H.run(desc, 1000, {
            '{"device":"a","pm25":12.5,"co2":400}', '{"pm25":3,"t":[1,{"device":"x"}],"device":"b"}',
            '{"co2":1}', '{"device":"c","pm25":null}',
        })
        assert.is_true(ok)
        assert.equal(0, failed)
        local got = {}
        for _, pair in ipairs(sink.last()) do
            got[pair[1]] = pair[2]
        end
        assert.same({ ["device,pm25"] = 2, [""] = 1, device = 1 }, got)
    end)

    it("refuses fields for another format and a fields that is not a list of names", function()
        local cases = {
            ['format = "value", fields = { "a" }'] = "bad option 'fields' to 'socket' %(it names "
                .. "the fields format = \"json\" keeps; this source's format is value%)",
            ['format = "json", fields = "a,b"'] = "bad option 'fields' to 'socket' %(a list of "
                .. "field names expected",
            ['format = "json", fields = { a = "b" }'] = "bad option 'fields' to 'socket' %(a list",
            ['format = "json", fields = { "a", 2 }'] = "bad option 'fields' to 'socket' %(a list",
        }
        for opts, want in pairs(cases) do
            local desc, err = H.load(dir, [[
local ember = require "ember"
local job = ember.job { name = "f" }
job:socket { port = 1, ]] .. opts .. [[ }:print()
return job
]], "f")
            assert.is_nil(desc, opts)
            assert.matches("f%.lua:3: " .. want, err)
        end
    end)

    it("is refused for a value other than value, record and json", function()
        local desc, err = H.load(dir, [[
local ember = require "ember"
local job = ember.job { name = "k" }
job:socket { port = 1, format = "xml" }:print()
return job
]], "k")
        assert.is_nil(desc)
        assert.matches([[k%.lua:3: bad option 'format' to 'socket' %("value", "bytes", "record" or "json" ]]
                       .. [[expected, got xml%)]], err)
    end)
end)
