-- A busted output handler for spec/run: busted's usual terminal output
-- (utfTerminal on a terminal, plainTerminal otherwise, or EMBER_SPEC_OUTPUT),
-- plus the counts written to the file named by EMBER_SPEC_SUMMARY after
-- every test and at the end of the suite, so spec/run can print its closing
-- line even when busted dies half way (the file then lacks "complete").
--
--   luajit /usr/bin/busted -o spec/support/summary.lua ...

local io_open = io.open
local os_getenv = os.getenv
local os_rename = os.rename
local string_format = string.format

return function(options)
    local busted = require "busted"
    -- busted's own choice: dots and colours on a terminal, plain text else.
    local inner = os_getenv("EMBER_SPEC_OUTPUT")
    if inner == nil or inner == "" then
        local ok, term = pcall(require, "term")
        local tty = ok and io.type(io.stdout) == "file" and term.isatty(io.stdout)
        inner = tty and "utfTerminal" or "plainTerminal"
    end
    local handler = require("busted.outputHandlers." .. inner)(options)
    local path = os_getenv("EMBER_SPEC_SUMMARY")

    local function write(complete)
        if not path or path == "" then
            return nil, true
        end
        local tmp = path .. ".tmp"
        local f = io_open(tmp, "w")
        if f then
            f:write(string_format("passed=%d\nfailed=%d\nerrors=%d\npending=%d\ncomplete=%s\n",
                                  handler.successesCount, handler.failuresCount,
                                  handler.errorsCount, handler.pendingsCount,
                                  complete and "yes" or "no"))
            f:close()
            os_rename(tmp, path)
        end
        return nil, true
    end

    local subscribe = handler.subscribe
    handler.subscribe = function(self, opts)
        subscribe(self, opts)
        -- Subscribed last, so the base handler has counted already.
        busted.subscribe({ "test", "end" }, function() return write(false) end)
        busted.subscribe({ "error" }, function() return write(false) end)
        busted.subscribe({ "failure" }, function() return write(false) end)
        busted.subscribe({ "suite", "end" }, function() return write(true) end)
    end
    return handler
end
