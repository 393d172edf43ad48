-- ember.json: the decoder behind format = "json". cjson is the reference
-- for what a JSON text means; every value here is compared against it.

local json = require "ember.json"
local cjson = require "cjson"
local ffi = require "ffi"


-- cjson's value with its null sentinels mapped to ember.json's rules: a
-- null field is absent, a null array element is json.null.
local function reference(text)
    local function conv(v, in_array)
        if v == cjson.null then
            return in_array and json.null or nil
        elseif type(v) == "table" then
            local out = {}
            local is_array = #v > 0 or next(v) == nil
            for k, x in pairs(v) do
                out[k] = conv(x, is_array)
            end
            return out
        end
        return v
    end
    return conv(cjson.decode(text), false)
end


local function decode_error(text)
    local ok, err = pcall(json.decode, text)
    assert.is_false(ok, "accepted: " .. text)
    return err
end


describe("ember.json.decode", function()
    it("decodes what cjson decodes, to the same values", function()
        local texts = {
            '{"device":"sensor-001","pm25":12.5,"co2":412,"ok":true,"bad":false}',
            '[1,2,3]', '[]', '{}', '"plain"', '0', '-0', '42', 'true', 'false',
            ' { "k" : [ ] , "j" : { } , "n" : [ [ ] , { } ] } ',
            '{"a":{"b":[1,{"c":"d"}],"e":{"f":{"g":[true,false,"x"]}}}}',
            '[{"a":1},{"a":2},{"b":[3]}]',
            '"line\\nbreak \\"quoted\\" back\\\\slash \\/ \\b\\f\\r\\t"',
            '"\\u00e9\\u4e2d\\ud83d\\ude00 and \\u0041"',
            '{"esc\\"aped key":1,"\\u00e9":2}',
            '[1e2,1E-2,-1.5e+3,0.5,123456789012,1.7976931348623157e308,5e-324]',
        }
        for _, text in ipairs(texts) do
            assert.same(reference(text), json.decode(text), text)
        end
    end)

    it("reads numbers to the same double as tonumber, short and long", function()
        local seed = 12345
        local function rand(n)
            seed = (seed * 1103515245 + 12345) % 2147483648
            return seed % n
        end
        local texts = { "0.1", "0.30000000000000004", "123456789012345678901234567890",
                        "1.00000000000000011102230246251565404236316680908203125",
                        "9007199254740993", "2.2250738585072014e-308", "4.9e-324",
                        "1e23", "1e22", "8.98846567431158e307", "0.000001234", "1e-400", "1e400" }
        for _ = 1, 2000 do
            local digits = {}
            for i = 1, 1 + rand(20) do
                digits[i] = tostring(rand(10))
            end
            local int = table.concat(digits):gsub("^0+(%d)", "%1")
            local text = (rand(2) == 0 and "-" or "") .. int
            if rand(2) == 0 then
                text = text .. "." .. tostring(rand(1000000))
            end
            if rand(3) == 0 then
                text = text .. "e" .. tostring(rand(60) - 30)
            end
            texts[#texts + 1] = text
        end
        for _, text in ipairs(texts) do
            local got = json.decode(text)
            assert.equal(tonumber(text), got, text)
            assert.equal(1 / tonumber(text) < 0, 1 / got < 0, "sign of " .. text)
        end
    end)

    it("leaves a null field out of its object and keeps a null array element as json.null",
       function()
        local v = json.decode('{"a":null,"b":1,"c":[null,2,null]}')
        assert.is_nil(v.a)
        assert.equal(1, v.b)
        assert.equal(3, #v.c)
        assert.equal(json.null, v.c[1])
        assert.equal(2, v.c[2])
        assert.equal(json.null, v.c[3])
        assert.is_nil(json.decode("null"))
        assert.equal("null", tostring(json.null))
    end)

    it("raises 'json: <what> at byte <n>' on malformed text", function()
        local cases = {
            ["{"] = "unexpected end at byte 2",
            ['{"a"}'] = "unexpected '}' at byte 5",
            ["[1,]"] = "unexpected ']' at byte 4",
            ["01"] = "unexpected '1' at byte 2",
            ['"abc'] = "unexpected end at byte 5",
            ["tru"] = "unexpected 't' at byte 1",
            ['{"a":1} x'] = "unexpected 'x' at byte 9",
            [""] = "unexpected end at byte 1",
            ["-"] = "unexpected end at byte 2",
            ["1."] = "unexpected end at byte 3",
            ['{"a":1,}'] = "unexpected '}' at byte 8",
            ["{'a':1}"] = "unexpected ''' at byte 2",
            ["[1 2]"] = "unexpected '2' at byte 4",
            ['"\\x"'] = "bad escape at byte 2",
            ['"\\u12"'] = "short \\u escape at byte 4",
            ["\1"] = "unexpected byte 0x01 at byte 1",
        }
        for text, want in pairs(cases) do
            assert.equal("json: " .. want, decode_error(text), text)
        end
        assert.matches("string expected, got number", select(2, pcall(json.decode, 1)))
    end)

    it("refuses nesting deeper than 1000 levels and takes 1000", function()
        assert.equal(1, #json.decode(string.rep("[", 1000) .. string.rep("]", 1000)))
        assert.equal("json: nested deeper than 1000 levels at byte 1001",
                     decode_error(string.rep("[", 1001) .. string.rep("]", 1001)))
    end)

    it("decodes texts of more tokens than its tape holds at first", function()
        local parts = {}
        for i = 1, 20000 do
            parts[i] = string.format('{"i":%d,"s":"v%d"}', i, i)
        end
        local v = json.decode("[" .. table.concat(parts, ",") .. "]")
        assert.equal(20000, #v)
        assert.same({ i = 1, s = "v1" }, v[1])
        assert.same({ i = 20000, s = "v20000" }, v[20000])
    end)

    it("keeps each record's own keys when the layout changes between records", function()
        -- The key cache compares bytes by position: same length, other bytes.
        local texts = { '{"ab":1,"cd":2}', '{"ab":3,"ce":4}', '{"xy":5}', '{"ab":6,"cd":7,"ef":8}',
                        '{"cd":9,"ab":10}' }
        for _, text in ipairs(texts) do
            assert.same(reference(text), json.decode(text), text)
        end
    end)

    it("decodes bytes in place, reading no further than the length given", function()
        -- A record in a block is followed by the next one, not by a NUL.
        local buf = ffi.new("char[?]", 32)
        ffi.copy(buf, '12345{"a":[1,2]}tr')
        assert.equal(123, json.decode_bytes(buf, 3))
        assert.same({ a = { 1, 2 } }, json.decode_bytes(buf + 5, 11))
        local ok, err = pcall(json.decode_bytes, buf + 16, 2)
        assert.is_false(ok)
        assert.equal("json: unexpected 't' at byte 1", err)
    end)
end)


describe("ember.json.projection", function()
    -- Random flat and nested objects, keys drawn from a small set so that
    -- layouts repeat (the key cache) and change (its misses).
    local seed = 4242
    local function rand(n)
        seed = (seed * 1103515245 + 12345) % 2147483648
        return seed % n
    end
    local KEYS = { "a", "b", "ad_id", "event_type", "n", "esc\\\"k", "x" }
    local function value(depth)
        local r = rand(depth > 2 and 4 or 6)
        if r == 0 then return tostring(rand(1000) - 500)
        elseif r == 1 then return '"s' .. rand(100) .. '"'
        elseif r == 2 then return ({ "true", "false", "null" })[rand(3) + 1]
        elseif r == 3 then return '"q\\"' .. rand(10) .. '"'
        elseif r == 4 then
            local items = {}
            for i = 1, rand(4) do items[i] = value(depth + 1) end
            return "[" .. table.concat(items, ",") .. "]"
        end
        local members = {}
        for i = 1, rand(4) do members[i] = '"' .. KEYS[rand(#KEYS) + 1] .. '":' .. value(depth + 1) end
        return "{" .. table.concat(members, ",") .. "}"
    end

    it("keeps only the named top-level fields, each as decode gives it", function()
        local decode = json.projection { "ad_id", "event_type", 'esc\\"k', "ad_id" }
        local kept = { ad_id = true, event_type = true, ['esc\\"k'] = true }
        for _ = 1, 3000 do
            local members, used = {}, {}
            for i = 1, 1 + rand(6) do
                local k = KEYS[rand(#KEYS) + 1]
                if not used[k] then             -- duplicate keys: cjson and ember differ
                    used[k] = true
                    members[#members + 1] = '"' .. k .. '":' .. value(1)
                end
            end
            local text = "{" .. table.concat(members, ",") .. "}"
            local want = {}
            for k, v in pairs(json.decode(text)) do
                if kept[k] then want[k] = v end
            end
            assert.same(want, decode(text, #text), text)
        end
    end)

    it("decodes a text that is not an object whole, and fails as decode does", function()
        local decode = json.projection { "a" }
        assert.same({ 1, { a = 2, b = 3 } }, decode('[1,{"a":2,"b":3}]', 17))
        assert.equal(7, decode("7", 1))
        assert.is_nil(decode("null", 4))
        local ok, err = pcall(decode, '{"b":[1,}', 9)
        assert.is_false(ok)
        assert.equal("json: unexpected '}' at byte 9", err)
    end)
end)

