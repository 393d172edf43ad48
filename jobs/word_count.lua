-- Word count over a TCP socket, like Spark's NetworkWordCount. ember
-- connects to localhost:9999 and reads lines; start a server with
--   nc -lk 9999
-- and type. Until one listens, the source retries with backoff.
--
-- EMBER_WORD_COUNT_SOCKET (host:port) names another server; "off" turns
-- the job off (the compose setup does, as nothing serves lines there).
local ember = require "ember"

local addr = os.getenv("EMBER_WORD_COUNT_SOCKET") or "localhost:9999"
if addr == "off" or addr == "" then
  return ember.disabled("EMBER_WORD_COUNT_SOCKET is off")
end
local host, port = addr:match("^(.+):(%d+)$")
if not host then
  error("EMBER_WORD_COUNT_SOCKET = '" .. addr .. "': host:port expected")
end

local job = ember.job { name = "word_count", batch_interval = "1s" }

job:socket { host = host, port = tonumber(port) }
  :flat_map(function(line)
    local words = {}
    for w in line:lower():gmatch("%a+") do
      words[#words + 1] = w
    end
    return words
  end)
  :map(function(w) return w, 1 end)
  :reduce_by_key(function(a, b) return a + b end)
  :print(10, { empty = false }) -- no empty headers while nothing is typed or nc is not up

return job
