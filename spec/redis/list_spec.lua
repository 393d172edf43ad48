-- The Redis list source as a reliable queue: items move to a processing
-- list when read and leave it only once their batch's outputs succeeded.
-- redis-cli writes the input and reads the output.

local driver = require "support.driver"
local redis_server = require "support.redis_server"

local render, seq, sorted = redis_server.render, redis_server.seq, redis_server.sorted
local prefixed = redis_server.prefixed
local q = driver.quote

local CONF = { ["streaming.blockInterval"] = "100ms" }

local DELIVER_JOB = [[
local ember = require "ember"
local job = ember.job { name = "queue", batch_interval = "200ms" }

job:redis { url = {{url}}, mode = "list", key = {{key}} {{extra}} }
   :map(function(v) return "out:" .. v end)
   :to_redis { url = {{url}}, command = function(v) return "RPUSH", {{out}}, v end }

return job
]]

-- The same, with an output that takes longer than the batch interval, so
-- that batches wait in line.
local SLOW_JOB = DELIVER_JOB:gsub("\n   :to_redis", [[

   :foreach_batch(function() os.execute("sleep 0.3") end)
   :to_redis]])


describe("the redis list source", function()
    local srv, d

    setup(function()
        srv = redis_server.start()
    end)

    teardown(function()
        if srv then
            srv:stop()
        end
    end)

    before_each(function()
        d = driver.new()
    end)

    after_each(function()
        d:stop()
    end)

    it("delivers every item pushed onto the list once, in order, through a Lua map to to_redis",
       function()
        local items = seq("a", 1, 300)
        -- LPUSH puts each item at the head; the source takes from the tail: FIFO
        srv:cli("LPUSH", "l1:in", unpack(items, 1, 200))
        d:write_job("queue", render(DELIVER_JOB, { url = q(srv.url), key = q("l1:in"),
                                                   out = q("l1:out"), extra = "" }))
        d:start { conf = CONF }
        srv:wait_len(d, "l1:out", 200)
        -- more while it runs: read by the blocking BLMOVE
        srv:cli("LPUSH", "l1:in", unpack(items, 201, 300))
        srv:wait_len(d, "l1:out", 300)
        d:wait_until(function()
            return srv:num("LLEN", "l1:in:processing:queue") == 0
        end, 5, 0.05, "the processing list to empty")
        assert.same(prefixed(items, "out:"), srv:lines("LRANGE", "l1:out", "0", "-1"))
        assert.equal(0, srv:num("LLEN", "l1:in"))
        d:signal("TERM")
        assert.equal(0, d:wait_exit(10))
    end)

    it("keeps a batch in flight in the processing list when the driver is killed, delivers it "
       .. "after a restart, and not again once done", function()
        local items = seq("b", 1, 200)
        srv:cli("LPUSH", "l2:in", unpack(items))
        local inflight = d:path("inflight.txt")
        d:write_job("queue", render(redis_server.STUCK_JOB, {
            name = q("queue"), mode = q("list"), url = q(srv.url), key = q("l2:in"),
            inflight = q(inflight), never = q(d:path("never")) }))
        d:start { conf = CONF }
        local stuck = d:wait_until(function()
            local l = d:file_lines("inflight.txt")
            return #l > 0 and l
        end, 10, 0.05, "a batch in flight")
        d:signal("KILL")
        d:wait_exit(5)

        -- Nothing was acknowledged: the stuck batch is in the processing list,
        -- and every item is still in Redis.
        local processing = srv:lines("LRANGE", "l2:in:processing:queue", "0", "-1")
        local set = {}
        for _, v in ipairs(processing) do
            set[v] = true
        end
        for _, v in ipairs(stuck) do
            assert.is_true(set[v], v .. " is not in the processing list")
        end
        local left = srv:lines("LRANGE", "l2:in", "0", "-1")
        local all = {}
        for _, v in ipairs(processing) do all[#all + 1] = v end
        for _, v in ipairs(left) do all[#all + 1] = v end
        assert.same(items, sorted(all))

        -- Restart with a working output: everything arrives once.
        d:remove_job("queue")
        d:write_job("queue", render(DELIVER_JOB, { url = q(srv.url), key = q("l2:in"),
                                                   out = q("l2:out"), extra = "" }))
        d:start { conf = CONF }
        d:wait_for_log("items in processing list 'l2:in:processing:queue' left by an earlier "
                       .. "run; processing them first", 10)
        srv:wait_len(d, "l2:out", 200)
        d:wait_until(function()
            return srv:num("LLEN", "l2:in:processing:queue") == 0
        end, 5, 0.05, "the processing list to empty")
        assert.same(prefixed(items, "out:"), sorted(srv:lines("LRANGE", "l2:out", "0", "-1")))
        -- The items of the stuck batch came first.
        local out = srv:lines("LRANGE", "l2:out", "0", "-1")
        local first = {}
        for i = 1, #processing do
            first[out[i]] = true
        end
        for _, v in ipairs(stuck) do
            assert.is_true(first["out:" .. v], "out:" .. v .. " did not come first")
        end

        -- After completed batches, a crash and a restart deliver nothing again.
        d:signal("KILL")
        d:wait_exit(5)
        d:start { conf = CONF }
        srv:cli("LPUSH", "l2:in", "sentinel")
        srv:wait_len(d, "l2:out", 201)
        local expected = prefixed(items, "out:")
        expected[#expected + 1] = "out:sentinel"
        assert.same(sorted(expected), sorted(srv:lines("LRANGE", "l2:out", "0", "-1")))
    end)

    it("repeats and loses nothing when a reload replaces the source while batches wait",
       function()
        local items = seq("r", 1, 1500)
        srv:cli("LPUSH", "l4:in", unpack(items))
        local function job(rate)
            return render(SLOW_JOB, { url = q(srv.url), key = q("l4:in"), out = q("l4:out"),
                                      extra = ", max_rate = " .. rate })
        end
        d:write_job("queue", job(1000))
        d:start { conf = CONF }
        srv:wait_len(d, "l4:out", 300)
        d:write_job("queue", job(1200))
        d:signal("HUP")
        d:wait_for_log("%[queue%] now running the new version %(0 of 1 sources kept running%)", 10)
        assert.is_true(srv:num("LLEN", "l4:out") < 1500, "the reload came too late")
        srv:wait_len(d, "l4:out", 1500)
        d:wait_until(function()
            return srv:num("LLEN", "l4:in:processing:queue") == 0
        end, 5, 0.05, "the processing list to empty")
        assert.same(prefixed(items, "out:"), sorted(srv:lines("LRANGE", "l4:out", "0", "-1")))
    end)

    it("reads no faster than max_rate: the backlog stays in the list", function()
        local RATE, BATCH_S, BLOCK_S = 400, 0.2, 0.1
        local items = seq("c", 1, 1000)
        srv:cli("LPUSH", "l3:in", unpack(items))
        d:write_job("queue", render(DELIVER_JOB, { url = q(srv.url), key = q("l3:in"),
                                                   out = q("l3:out"),
                                                   extra = ", max_rate = " .. RATE }))
        d:start { conf = CONF }
        srv:wait_len(d, "l3:out", 200)
        local t0, n0 = driver.now(), srv:num("LLEN", "l3:out")
        local most_taken = 0
        d:wait_until(function()
            -- what ember holds (read, not yet done) stays within a few batches
            local taken = srv:num("LLEN", "l3:in:processing:queue")
            most_taken = math.max(most_taken, taken)
            return srv:num("LLEN", "l3:out") >= n0 + 600
        end, 10, 0.05, "600 more items out")
        local rate = (srv:num("LLEN", "l3:out") - n0) / (driver.now() - t0)
        assert.is_true(rate > RATE * 0.75 and rate < RATE * 1.25,
                       string.format("drained at %.0f/s with max_rate %d", rate, RATE))
        assert.is_true(srv:num("LLEN", "l3:in") > 0, "the backlog left the list")
        assert.is_true(most_taken <= 2 * (RATE * BATCH_S + RATE * BLOCK_S),
                       "ember held " .. most_taken .. " items at once")

        srv:wait_len(d, "l3:out", 1000)
        assert.same(prefixed(items, "out:"), srv:lines("LRANGE", "l3:out", "0", "-1"))
        local bound, biggest = RATE * BATCH_S + RATE * BLOCK_S, 0
        for _, b in ipairs(d:batches("queue")) do
            assert.is_true(b.records <= bound, string.format(
                "a batch of %d records, more than %d/s * %gs + one %gs block\n%s",
                b.records, RATE, BATCH_S, BLOCK_S, b.line))
            biggest = math.max(biggest, b.records)
        end
        assert.is_true(biggest >= RATE * BATCH_S / 2, "largest batch: " .. biggest)
    end)
end)
