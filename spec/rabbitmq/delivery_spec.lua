-- RabbitMQ source and sink against a real rabbitmq-server (one for the whole
-- file: it takes seconds to start), with amqp-tools and rabbitmqctl as the
-- independent clients that write the input and read the output.

local driver = require "support.driver"
local rabbit = require "support.rabbitmq_server"


-- Numbered records: "<prefix>-0001" ... (published with a "\n" after each:
-- see support.rabbitmq_server's publish)
local function records(prefix, n)
    local t = {}
    for i = 1, n do
        t[i] = string.format("%s-%04d", prefix, i)
    end
    return t
end


local function map(list, fn)
    local t = {}
    for i, v in ipairs(list) do
        t[i] = fn(v)
    end
    return t
end


-- Complete lines of a file a job appends to (a line still being written,
-- without its "\n", is not counted yet).
local function complete_lines(path)
    local s = driver.read_file(path) or ""
    local t = {}
    for line in s:gmatch("([^\n]*)\n") do
        t[#t + 1] = line
    end
    return t
end


-- Checks that got holds every expected record and nothing else. Returns the
-- number of duplicates (records seen more than once).
local function assert_set(expected, got, allow_duplicates)
    local want, seen, dups = {}, {}, 0
    for _, v in ipairs(expected) do
        want[v] = true
    end
    local invented = {}
    for _, v in ipairs(got) do
        if not want[v] then
            invented[#invented + 1] = v
        end
        if seen[v] then
            dups = dups + 1
        end
        seen[v] = true
    end
    local missing = {}
    for _, v in ipairs(expected) do
        if not seen[v] then
            missing[#missing + 1] = v
        end
    end
    assert(#missing == 0, #missing .. " records lost, first: " .. tostring(missing[1]))
    assert(#invented == 0, #invented .. " records invented, first: " .. tostring(invented[1]))
    if not allow_duplicates then
        assert(dups == 0, dups .. " records delivered twice")
    end
    return dups
end


local function drained(q)
    return q ~= nil and q.ready == 0 and q.unacked == 0
end


local E2E_JOB = [[
local ember = require "ember"
local job = ember.job { name = {{name}} }

job:rabbitmq { url = {{url}}, queue = {{input}}{{source_extra}} }
   :map(function(v) return "out:" .. v end)
   :to_rabbitmq { url = {{url}}, routing_key = {{output}}, mandatory = true }

return job
]]

-- A generator's 20000 numbers in one second's batches: more than the
-- sink's chunk of 8192 in a batch. Bodies end in "\n", as consume() wants.
local CHUNK_JOB = [[
local ember = require "ember"
local job = ember.job { name = "chunk", batch_interval = "1s" }

job:generator { kind = "sequence", count = 20000, rate = 0 }
   :map(function(v) return v .. "\n" end)
   :to_rabbitmq { url = {{url}}, routing_key = "chunk_out", mandatory = true }

return job
]]

-- Appends each batch's records to a file, as they are (the input bodies
-- end with "\n"); with a gate, first announces the batch and then blocks
-- until the gate file exists.
local FILE_JOB = [[
local ember = require "ember"
local socket = require "socket"
local job = ember.job { name = {{name}} }

local gate, started = {{gate}}, {{started}}

job:rabbitmq { url = {{url}}, queue = {{input}}{{source_extra}} }
   :foreach_batch(function(batch)
       if #batch == 0 then
           return
       end
       if started then
           local f = assert(io.open(started, "a"))
           f:write(#batch, "\n")
           f:close()
       end
       while gate do
           local g = io.open(gate, "r")
           if g then
               g:close()
               break
           end
           socket.sleep(0.02)
       end
       if {{delay}} > 0 then
           socket.sleep({{delay}})
       end
       local f = assert(io.open({{out}}, "a"))
       f:write(table.concat(batch))     -- each body ends with its own "\n"
       f:close()
   end)

return job
]]


local function file_job(vars)
    return driver.render(FILE_JOB, {
        name = driver.quote(vars.name),
        url = driver.quote(vars.url),
        input = driver.quote(vars.input),
        source_extra = vars.source_extra or "",
        gate = vars.gate and driver.quote(vars.gate) or "nil",
        started = vars.started and driver.quote(vars.started) or "nil",
        delay = vars.delay or 0,
        out = driver.quote(vars.out),
    })
end


describe("rabbitmq", function()
    local srv

    setup(function()
        srv = rabbit.start()
    end)

    teardown(function()
        if srv then
            srv:stop()
            assert.same({}, srv:beam_pids())
        end
    end)


    describe("end to end", function()
        it("takes every message of a queue and publishes each result exactly once", function()
            local d = driver.new()
            finally(function() d:stop() end)
            local input = records("e2e", 500)
            srv:declare("e2e_in")
            srv:declare("e2e_out")
            srv:publish("e2e_in", input)
            d:write_job("e2e.lua", driver.render(E2E_JOB, {
                name = '"e2e"', url = driver.quote(srv.url), input = '"e2e_in"',
                output = '"e2e_out"', source_extra = "",
            }))
            d:start()
            d:wait_for_log("rabbitmq queue 'e2e_in' at amqp://guest@127.0.0.1:%d+/: connected", 10)
            -- Acked only once the sink's confirms came: drained input means
            -- every output is in the output queue.
            srv:wait_queue("e2e_in", drained, 30, "e2e_in drained and acknowledged")
            assert.same({ ready = 500, unacked = 0 }, srv:queue("e2e_out"))
            local got = srv:consume("e2e_out", 500)
            assert_set(map(input, function(v) return "out:" .. v end), got)
            assert.same({ ready = 0, unacked = 0 }, srv:queue("e2e_out"))
            -- The password never reaches the log.
            assert.equal(0, #d:log_lines("guest:guest", { plain = true }))
        end)

        it("publishes batches larger than the sink's chunk, every record once, confirmed",
           function()
            local d = driver.new()
            finally(function() d:stop() end)
            srv:declare("chunk_out")
            d:write_job("chunk.lua", driver.render(CHUNK_JOB, { url = driver.quote(srv.url) }))
            d:start()
            d:wait_until(function()
                local q = srv:queue("chunk_out")
                return q.ready >= 20000, q.ready .. " messages in chunk_out"
            end, 30, 0.2, "20000 messages in chunk_out")
            local biggest = 0
            for _, b in ipairs(d:batches("chunk")) do
                biggest = math.max(biggest, b.records)
                assert.equal(0, b.failed or 0, b.line)
            end
            assert.is_true(biggest > 8192, "the largest batch held " .. biggest .. " records")
            local want = {}
            for i = 1, 20000 do
                want[i] = tostring(i)
            end
            assert_set(want, srv:consume("chunk_out", 20000))
        end)

        it("binds its queue to an exchange, gives each record its exchange and routing key, and routes it by a routing_key function", function()
            local d = driver.new()
            finally(function() d:stop() end)
            srv:declare("even_out")
            srv:declare("odd_out")
            d:write_job("route.lua", [[
local ember = require "ember"
local job = ember.job { name = "route" }
job:rabbitmq { url = ]] .. driver.quote(srv.url) .. [[, queue = "route_in",
               exchange = "amq.direct", routing_key = "readings", format = "record" }
   :to_rabbitmq { url = ]] .. driver.quote(srv.url) .. [[, mandatory = true,
                  routing_key = function(r)
                      return tonumber(r.value:match("%d+")) % 2 == 0 and "even_out" or "odd_out"
                  end,
                  body = function(r)
                      return table.concat({ r.exchange, r.key, r.value }, ":")
                  end }
return job
]])
            d:start()
            d:wait_for_log("queue 'route_in' .*: connected", 10)   -- declared and bound
            local input = records("route", 100)
            srv:publish("readings", input, "amq.direct")
            srv:publish("other", { "route-9999" }, "amq.direct")   -- not bound: dropped
            srv:wait_queue("odd_out", function(q) return q and q.ready == 50 end, 20,
                           "50 odd records")
            srv:wait_queue("route_in", drained, 20, "route_in acknowledged")
            assert.same({ ready = 50, unacked = 0 }, srv:queue("even_out"))
            local even, odd = {}, {}
            for i, v in ipairs(input) do
                local t = i % 2 == 0 and even or odd
                t[#t + 1] = "amq.direct:readings:" .. v
            end
            assert_set(even, srv:consume("even_out", 50))
            assert_set(odd, srv:consume("odd_out", 50))
        end)

        it("fails a batch the broker returns (mandatory) and delivers it once a queue is bound", function()
            local d = driver.new()
            finally(function() d:stop() end)
            local input = records("ret", 30)
            srv:declare("ret_in")
            srv:publish("ret_in", input)
            d:write_job("ret.lua", driver.render(E2E_JOB, {
                name = '"ret"', url = driver.quote(srv.url), input = '"ret_in"',
                output = '"ret_out"', source_extra = "",
            }))
            -- No retries: a failed batch is nacked at once and comes again.
            d:start { conf = driver.conf { ["streaming.batch.maxRetries"] = "0" } }
            d:wait_for_log("returned a message: 312 NO_ROUTE", 15)
            srv:declare("ret_out")
            srv:wait_queue("ret_in", drained, 30, "ret_in drained once ret_out exists")
            local q = srv:queue("ret_out")
            local got = srv:consume("ret_out", q.ready)
            -- A batch cut while the queue was being declared may have been
            -- partly routed before it failed: at-least-once allows repeats.
            assert_set(map(input, function(v) return "out:" .. v end), got, true)
        end)
    end)


    describe("acknowledgement", function()
        it("redelivers the records of a batch whose output had not finished when ember was killed, and never a completed one", function()
            local d = driver.new()
            finally(function() d:stop() end)
            local input = records("ack", 40)
            local out, started, gate = d:path("out.txt"), d:path("started.txt"), d:path("gate")
            srv:declare("ack_in")
            srv:publish("ack_in", input)

            -- 1. The output blocks: the records are received, not acked.
            d:write_job("acks.lua", file_job { name = "acks", url = srv.url, input = "ack_in",
                                               gate = gate, started = started, out = out })
            d:start()
            d:wait_until(function() return #complete_lines(started) > 0 end, 15,
                         0.02, "a batch in the blocking output")
            srv:wait_queue("ack_in", function(q) return q and q.ready == 0 and q.unacked == 40 end,
                           15, "all 40 delivered to ember and unacknowledged")
            d:signal("KILL")
            d:wait_exit()
            assert.same({}, complete_lines(out))
            srv:wait_queue("ack_in", function(q) return q and q.ready == 40 and q.unacked == 0 end,
                           15, "the broker requeued the 40 unacknowledged messages")

            -- 2. A normal job: they arrive, and are acked after the output.
            d:write_job("acks.lua", file_job { name = "acks", url = srv.url, input = "ack_in",
                                               out = out })
            d:start()
            d:wait_until(function() return #complete_lines(out) >= 40 end, 15, 0.02,
                         "the 40 records in the output")
            srv:wait_queue("ack_in", drained, 15, "ack_in acknowledged")
            assert_set(input, complete_lines(out))

            -- 3. Killed after the completed batch: nothing comes again. A
            -- sentinel published behind them proves it: the queue is FIFO,
            -- so a redelivery would arrive before it.
            d:signal("KILL")
            d:wait_exit()
            assert.same({ ready = 0, unacked = 0 }, srv:queue("ack_in"))
            srv:publish("ack_in", { "sentinel" })
            d:start()
            d:wait_until(function()
                local l = complete_lines(out)
                return l[#l] == "sentinel"
            end, 15, 0.02, "the sentinel in the output")
            local all = complete_lines(out)
            input[#input + 1] = "sentinel"
            assert_set(input, all)
            assert.equal(41, #all)
        end)

        it("acknowledges on a graceful stop every record it processed, and the rest comes after a restart, none twice", function()
            local d = driver.new()
            finally(function() d:stop() end)
            local input = records("stop", 600)
            local out = d:path("out.txt")
            srv:declare("stop_in")
            srv:publish("stop_in", input)
            d:write_job("stop.lua", file_job { name = "stop", url = srv.url, input = "stop_in",
                                               source_extra = ", max_rate = 300", out = out })
            d:start()
            d:wait_until(function() return #complete_lines(out) >= 100 end, 15, 0.02,
                         "the first 100 records in the output")
            d:signal("TERM")
            assert.equal(0, d:wait_exit(15))
            local first = #complete_lines(out)
            assert(first < 600, "the stop came too late to test anything")
            -- What was output is acked; what was not is back in the queue.
            assert.same({ ready = 600 - first, unacked = 0 }, srv:queue("stop_in"))
            d:start()
            d:wait_until(function() return #complete_lines(out) >= 600 end, 15, 0.02,
                         "all 600 records in the output")
            srv:wait_queue("stop_in", drained, 15, "stop_in acknowledged")
            assert_set(input, complete_lines(out))
        end)
    end)


    describe("broker restart", function()
        it("loses no record when the broker restarts mid-stream, and logs the outage once", function()
            local d = driver.new()
            finally(function() d:stop() end)
            local input = records("restart", 1000)
            srv:declare("restart_in")
            srv:declare("restart_out")
            srv:publish("restart_in", input)
            d:write_job("restart.lua", driver.render(E2E_JOB, {
                name = '"restart"', url = driver.quote(srv.url), input = '"restart_in"',
                output = '"restart_out"', source_extra = ", max_rate = 250",
            }))
            d:start()
            srv:wait_queue("restart_out", function(q) return q and q.ready >= 100 end, 20,
                           "the first records in restart_out")
            srv:restart()
            d:wait_for_log("reconnected after", 40)
            srv:wait_queue("restart_in", drained, 60, "restart_in drained and acknowledged")
            local q = srv:queue("restart_out")
            local got = srv:consume("restart_out", q.ready)
            local dups = assert_set(map(input, function(v) return "out:" .. v end), got, true)
            io.stderr:write(string.format("\n[broker restart: %d records out, %d duplicates]\n",
                                          #got, dups))
            -- One warning for the outage, not one per attempt.
            assert.equal(1, #d:log_lines("warn  %[restart%] rabbitmq queue 'restart_in'.*"
                                         .. "logged once per outage"))
        end)
    end)


    describe("prefetch", function()
        it("never lets unacknowledged messages exceed the prefetch while a slow job drains a backlog", function()
            local d = driver.new()
            finally(function() d:stop() end)
            local slow, capped = records("pf", 1000), records("cap", 300)
            local out_slow, out_capped = d:path("slow.txt"), d:path("capped.txt")
            srv:declare("pf_in")
            srv:declare("cap_in")
            srv:publish("pf_in", slow)
            srv:publish("cap_in", capped)
            d:write_job("slow.lua", file_job { name = "slow", url = srv.url, input = "pf_in",
                                               source_extra = ", prefetch = 100",
                                               delay = 0.25, out = out_slow })
            d:write_job("capped.lua", file_job { name = "capped", url = srv.url, input = "cap_in",
                                                 source_extra = ", max_rate = 60",
                                                 out = out_capped })
            d:start()
            d:wait_for_log("queue 'pf_in' .*prefetch 100 %(option 'prefetch'%)", 10)
            d:wait_for_log("queue 'cap_in' .*prefetch 24 %(0.4 s at max_rate 60/s%)", 10)

            local samples, full = 0, 0
            d:wait_until(function()
                local qs = srv:queues()
                local p, c = qs.pf_in, qs.cap_in
                samples = samples + 1
                assert(p.unacked <= 100, "pf_in: " .. p.unacked .. " unacked, prefetch 100")
                assert(c.unacked <= 24, "cap_in: " .. c.unacked .. " unacked, prefetch 24")
                if p.ready > 0 and p.unacked > 0 then
                    full = full + 1   -- backlog kept in the broker while the window is in use
                end
                return #complete_lines(out_slow) >= 1000 and #complete_lines(out_capped) >= 300,
                       string.format("pf_in %d/%d, cap_in %d/%d", p.ready, p.unacked, c.ready,
                                     c.unacked)
            end, 60, 0.05, "both jobs through their backlog")
            -- A sample is a rabbitmqctl call, seconds apiece on a busy machine:
            -- the drain may see only a few, so one is what is asked.
            assert(full >= 1, "none of " .. samples .. " samples saw a backlog "
                   .. "waiting behind a used window")
            assert_set(slow, complete_lines(out_slow))
            assert_set(capped, complete_lines(out_capped))
            srv:wait_queue("pf_in", drained, 10, "pf_in acknowledged")
            srv:wait_queue("cap_in", drained, 10, "cap_in acknowledged")
        end)
    end)
end)
