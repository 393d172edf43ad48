-- stream:lookup_redis{...}: misuse fails at the script's line (the
-- lookups themselves run against a real Redis in spec/redis/lookup_spec.lua).

local H = require "spec.unit.support.helper"


local dir

before_each(function()
    dir = H.tmpdir()
end)

after_each(function()
    H.rm_rf(dir)
end)

describe("lookup_redis declarations", function()
    it("fail at the script's line, naming the option", function()
        local U = "url = 'redis://127.0.0.1:6379'"
        local cases = {
            { "s:lookup_redis { " .. U .. " }", "'lookup_redis' needs a stream of %(key, value%) pairs" },
            { "p:lookup_redis { }", "bad option 'url' to 'lookup_redis'" },
            { "p:lookup_redis { " .. U .. ", ttl = 'later' }", "bad option 'ttl'" },
            { "p:lookup_redis { " .. U .. ", chunk = 0 }", "bad option 'chunk'" },
            { "p:lookup_redis { " .. U .. ", command = 'GET x' }", "bad option 'command'" },
            { "p:lookup_redis { " .. U .. ", key = 'k' }", "bad option 'key'" },
            { "p:lookup_redis { " .. U .. ", cache = 1 }", "unknown option 'cache'" },
        }
        for _, c in ipairs(cases) do
            local src = "local ember = require 'ember'\nlocal job = ember.job {}\n"
                        .. "local s = job:generator {} local p = s:map(function(x) return x, 1 end)\n"
                        .. c[1] .. ":print()\nreturn job\n"
            local desc, err = H.load(dir, src, "bad")
            assert.is_nil(desc, c[1])
            assert.matches("bad%.lua:4: .*" .. c[2], err)
        end
    end)

    it("a good one loads", function()
        local src = [[
local ember = require 'ember'
local job = ember.job {}
job:generator {}:map(function(x) return x, 1 end)
   :lookup_redis { url = 'redis://127.0.0.1:6379', command = 'HGET', ttl = 0, chunk = 10,
                   key = function(k) return 'h', k end, inner = true }
   :print()
return job
]]
        local desc, err = H.load(dir, src, "good")
        assert.truthy(desc, err)
    end)
end)
