-- How to_redis and ember.redis write numbers as command arguments: text
-- Redis reads back as the same number, integers without an exponent.

local redis = require "ember.redis"
local arg_string = redis.arg_string


describe("ember.redis argument text", function()
    it("writes integers plainly and readings with their decimals as written", function()
        local cases = {
            [0] = "0", [42] = "42", [-7] = "-7", [1e15] = "1000000000000000",
            [12.3] = "12.3", [-0.5] = "-0.5", [99.75] = "99.75", [0.000001] = "0.000001",
            [123456.789] = "123456.789", [0.1 + 0.2] = "0.30000000000000004",
            [1 / 3] = "0.33333333333333331", [1e300] = "1e+300", [2.5e-10] = "2.5e-10",
        }
        for n, want in pairs(cases) do
            assert.equal(want, arg_string(n), tostring(n))
        end
        assert.equal("text", arg_string("text"))
        assert.is_nil(arg_string({}))
    end)

    it("reads back as the same double for every number, short and long", function()
        local seed = 7
        local function rand(n)
            seed = (seed * 1103515245 + 12345) % 2147483648
            return seed % n
        end
        for _ = 1, 20000 do
            local places = rand(9)
            local a = (rand(2000000000) - 1000000000) / 10 ^ places
            if rand(4) == 0 then
                a = a * 10 ^ (rand(40) - 20)
            end
            local s = arg_string(a)
            assert.equal(a, tonumber(s), s)
        end
        -- near the 2^52 bound of the fixed-decimals case
        for _, a in ipairs { 4503599627370.4965, 450359962737.04965, 4503599627370495.5,
                             -4503599627370.4965, 2 ^ 52 / 10 + 0.5 } do
            assert.equal(a, tonumber(arg_string(a)), arg_string(a))
        end
    end)
end)
