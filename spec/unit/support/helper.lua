-- Shared by the unit specs: write a job script to a temp dir, load it with
-- a host whose log collects messages, run batches, capture stdout.

local runtime = require "ember.runtime"
local view = require "spec.unit.support.view"


local _M = {}


-- A fresh directory under /tmp; removed by cleanup().
function _M.tmpdir()
    local path = os.tmpname()
    os.remove(path)
    assert(os.execute("mkdir -p '" .. path .. "'"))
    return path
end


function _M.rm_rf(path)
    os.execute("rm -rf '" .. path .. "'")
end


function _M.write(path, content)
    local f = assert(io.open(path, "wb"))
    f:write(content)
    f:close()
end


function _M.read(path)
    local f = io.open(path, "rb")
    if not f then
        return nil
    end
    local s = f:read("*a")
    f:close()
    return s
end


-- A host table as core/luahost.c fills it; logs land in host.logs.
function _M.host(dir)
    local logs = {}
    return {
        logs = logs,
        checkpoint_dir = dir and (dir .. "/checkpoint") or nil,
        log = function(level, job, msg)
            logs[#logs + 1] = { level = level, job = job, msg = msg }
        end,
    }
end


-- Writes src to <dir>/<name>.lua and loads it. Returns desc, err, host, path.
function _M.load(dir, src, name, host)
    local path = dir .. "/" .. (name or "job") .. ".lua"
    _M.write(path, src)
    host = host or _M.host(dir)
    host.file = path
    local desc, err = runtime.load(path, host)
    return desc, err, host, path
end


-- Runs one batch of single-source records; returns run_batch's results.
-- (Not a tail call: v must stay referenced, or the GC may free the view's
-- cdata while the batch reads it.)
function _M.run(desc, time_ms, ...)
    local v = view.batch(time_ms, ...)
    local ok, failed, err, fatal = desc.run_batch(v.ptr)
    v.keep = v.keep
    return ok, failed, err, fatal
end


-- Runs one batch with a batch id (stateful jobs); returns run_batch's results.
function _M.run_id(desc, batch_id, time_ms, ...)
    local v = view.batch(time_ms, ...)
    local ok, failed, err, fatal = desc.run_batch(v.ptr, batch_id)
    v.keep = v.keep
    return ok, failed, err, fatal
end


-- Runs batch batch_id and commits its state as the driver does: run,
-- prepare, apply. Raises when any step fails; returns prepare's bytes.
function _M.commit(desc, batch_id, time_ms, ...)
    local ok, failed, err, fatal = _M.run_id(desc, batch_id, time_ms, ...)
    assert(ok and failed == 0 and not fatal, "batch " .. batch_id .. ": " .. tostring(err))
    local pok, perr, bytes = desc.prepare(batch_id)
    assert(pok, perr)
    assert(desc.apply(batch_id))
    return bytes
end


-- Calls fn with io.write going to a buffer; returns what was written.
function _M.capture(fn)
    local path = os.tmpname()
    local f = assert(io.open(path, "w+b"))
    local old = io.output()
    io.output(f)
    local ok, err = pcall(fn)
    io.output(old)
    f:seek("set")
    local out = f:read("*a")
    f:close()
    os.remove(path)
    assert(ok, err)
    return out
end


-- A sink that job scripts reach with require "test_sink":
--   :foreach_batch(require("test_sink").collect)
-- It keeps every batch's records and info; sink.log is a free-form list.
function _M.sink()
    local s = { batches = {}, log = {} }
    function s.collect(records, info)
        s.batches[#s.batches + 1] = { records = records, info = info }
    end
    function s.last()
        local b = s.batches[#s.batches]
        return b and b.records
    end
    package.loaded.test_sink = s
    return s
end


return _M
