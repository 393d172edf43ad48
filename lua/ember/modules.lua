-- ember.modules: each broker's connector lives in a module of its own
-- (modules/ember-kafka.so, -redis, -rabbitmq), which the C core loads the
-- first time a source names it (core/connectors.c). A sink, a table or a
-- lookup reaches the module's functions through ffi.C, so it asks for the
-- module here first: a job with a Redis sink and no Redis source works.

local ffi = require "ffi"

local pcall = pcall

pcall(ffi.cdef, "int em_connector_load(const char *name, char *err, size_t errlen);")

local ERR_LEN = 1536

local _M = {}

local loaded = {}


-- Loads the module of connector name ("kafka", "redis", "rabbitmq").
-- Returns true (also outside the driver, a unit spec with a plain luajit:
-- there is nothing to load, and the caller's own probe of ffi.C decides),
-- or nil and why it would not load.
function _M.need(name)
    if loaded[name] then
        return true
    end
    local ok, load = pcall(function() return ffi.C.em_connector_load end)
    if not ok then
        return true
    end
    local err = ffi.new("char[?]", ERR_LEN)
    if load(name, err, ERR_LEN) ~= 0 then
        return nil, ffi.string(err)
    end
    loaded[name] = true
    return true
end


return _M
