-- support.http: a small HTTP/1.0 client over a raw socket, for ember's API.
--
--   local http = require "support.http"
--   local code, body, headers = http.request(port, "GET", "/api/v1/jobs")
--   local jobs = http.json(port, "/api/v1/jobs")        -- 200 or raises
--   local code, doc = http.post(port, "/api/v1/reload", token)
--   local reply = http.raw(port, "GARBAGE\r\n\r\n")      -- whatever came back
--
-- Raw sockets rather than socket.http so the specs control every byte:
-- the malformed requests are written as they are, and nothing is retried
-- or rewritten on the way. Every call has a deadline.

local socket = require "socket"
local cjson = require "cjson"

local error = error
local tostring = tostring
local tonumber = tonumber
local pairs = pairs
local str_format = string.format
local str_match = string.match
local str_lower = string.lower
local tbl_concat = table.concat


local _M = {}


local function connect(port, timeout)
    local c = assert(socket.tcp4())
    c:settimeout(timeout or 10)
    local ok, err = c:connect("127.0.0.1", port)
    if not ok then
        c:close()
        return nil, err
    end
    return c
end
_M.connect = connect


-- Sends data as it is and reads until the server closes (or timeout);
-- returns what came back ("" when nothing did) and the error, if any.
function _M.raw(port, data, timeout)
    local c, err = connect(port, timeout)
    if not c then
        return nil, err
    end
    c:settimeout(timeout or 10)
    local _, serr = c:send(data)
    local got, rerr, partial = c:receive("*a")
    c:close()
    return got or partial or "", serr or rerr
end


-- The status code, body and lower-cased headers of one request.
function _M.request(port, method, path, headers, body, timeout)
    local lines = { str_format("%s %s HTTP/1.0", method, path), "Host: 127.0.0.1" }
    for k, v in pairs(headers or {}) do
        lines[#lines + 1] = k .. ": " .. v
    end
    body = body or ""
    lines[#lines + 1] = "Content-Length: " .. #body
    local reply, err = _M.raw(port, tbl_concat(lines, "\r\n") .. "\r\n\r\n" .. body, timeout)
    if not reply or reply == "" then
        error(str_format("%s %s: no answer from 127.0.0.1:%d (%s)", method, path, port,
                         tostring(err)), 2)
    end
    local code = tonumber(str_match(reply, "^HTTP/1%.%d (%d+)"))
    local head, rest = str_match(reply, "^(.-)\r\n\r\n(.*)$")
    local hdrs = {}
    for k, v in (head or ""):gmatch("\r\n([^:\r\n]+):%s*([^\r\n]*)") do
        hdrs[str_lower(k)] = v
    end
    return code, rest or "", hdrs
end


-- GET path and decode its JSON; raises unless the status is `want` (200).
function _M.json(port, path, want)
    local code, body = _M.request(port, "GET", path)
    if code ~= (want or 200) then
        error(str_format("GET %s: status %s, wanted %d: %s", path, tostring(code), want or 200,
                         body), 2)
    end
    return cjson.decode(body)
end


-- POST path with an optional Bearer token; returns the code and the
-- decoded JSON answer.
function _M.post(port, path, token, timeout)
    local headers = token and { Authorization = "Bearer " .. token } or nil
    local code, body = _M.request(port, "POST", path, headers, nil, timeout)
    local ok, doc = pcall(cjson.decode, body)
    return code, ok and doc or body
end


return _M
