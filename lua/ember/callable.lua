-- ember.callable: whether a value can be called as a job's function (a
-- function, or a table whose metatable has __call), for the operators'
-- option checks.

local type = type
local getmetatable = getmetatable

return function(f)
    if type(f) == "function" then
        return true
    end
    local mt = getmetatable(f)
    return type(mt) == "table" and mt.__call ~= nil
end
