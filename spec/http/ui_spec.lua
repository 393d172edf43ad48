-- The web page at / in a real browser: headless Chromium from Debian loads
-- it against a running driver; the spec reads the DOM the page's script
-- rendered and keeps a screenshot in build/spec-artifacts/. Beside two
-- generator jobs, a job with event-time windows (its state size) and a
-- Redis list to Redis list job (its source's lag, its sink pool).

local driver = require "support.driver"
local http = require "support.http"
local redis_server = require "support.redis_server"
local stdlib = require "posix.stdlib"
local cjson = require "cjson"


local GEN_JOB = [[
local ember = require "ember"
local job = ember.job { name = {{name}}, batch_interval = "200ms" }
job:generator { kind = "sequence", rate = {{rate}} }
   :foreach_batch(function() end)
return job
]]

-- Event-time windows over a sequence: a job with state (and no late records).
local WINDOW_JOB = [[
local ember = require "ember"
local job = ember.job { name = "windows", batch_interval = "200ms" }
job:generator { kind = "sequence", rate = 50 }
   :event_time(function(n) return tonumber(n) * 10 end)
   :with_watermark(0)
   :map(function(n) return "k" .. (tonumber(n) % 5), 1 end)
   :event_window { size = "1s", name = "per_key" }
   :count()
   :foreach_batch(function() end)
return job
]]

-- A Redis list in, a Redis list out: a lag with its detail, and a sink pool.
local QUEUE_JOB = [[
local ember = require "ember"
local job = ember.job { name = "queue", batch_interval = "200ms" }
job:redis { url = {{url}}, mode = "list", key = "ui:in", block = "50ms" }
   :to_redis { url = {{url}}, command = function(v) return "RPUSH", "ui:out", v end }
return job
]]

-- Two reference tables from files; the spec removes the second one's file
-- once loaded, so it goes stale (keeping its entries).
local TABLE_JOB = [[
local ember = require "ember"
local job = ember.job { name = "lookup", batch_interval = "200ms" }
local sites = job:table { name = "sites", from = { file = {{file}} } }
local later = job:table { name = "later", from = { file = {{later}} }, refresh = "200ms" }
job:generator { kind = "sequence", rate = 20 }
   :map(function(n) return tostring(n % 3), n end)
   :join(sites)
   :join(later)
   :foreach_batch(function() end)
return job
]]

local ARTIFACTS = driver.root .. "/build/spec-artifacts"


-- Runs chromium headless on url with a fresh profile; extra: its action
-- (--dump-dom, --screenshot=...). Returns its stdout.
local function chromium(d, url, extra)
    local profile = assert(stdlib.mkdtemp(d:path("chromium-XXXXXX")))
    local cmd = table.concat({
        "timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic",
        "--no-first-run --disable-background-networking --disable-component-update",
        "--disable-sync --user-data-dir=" .. profile,
        -- the page's fetches and first draw happen within this much virtual time
        "--virtual-time-budget=10000 --window-size=1280,1600", extra, "'" .. url .. "'",
        "2>" .. d:path("chromium.log") }, " ")
    local p = io.popen(cmd)
    local out = p:read("*a")
    p:close()
    return out
end


describe("the web UI", function()
    local d, redis

    setup(function()
        d = driver.new()
        redis = redis_server.start()
        redis:cli("RPUSH", "ui:in", "a", "b", "c")
        d:write_job("windows.lua", WINDOW_JOB)
        d:write_job("queue.lua", driver.render(QUEUE_JOB, { url = driver.quote(redis.url) }))
        d:write_job("fast.lua", driver.render(GEN_JOB, { name = driver.quote("fast"), rate = 500 }))
        d:write_job("slow.lua", driver.render(GEN_JOB, { name = driver.quote("slow"), rate = 20 }))
        driver.write_file(d:path("sites.tsv"), "0\tx\n1\ty\n")
        driver.write_file(d:path("later.tsv"), "0\tz\n")
        d:write_job("lookup.lua", driver.render(TABLE_JOB, {
            file = driver.quote(d:path("sites.tsv")), later = driver.quote(d:path("later.tsv")) }))
        d:start()
    end)

    teardown(function()
        d:stop()
        redis:stop()
    end)

    it("renders every job with charts that have points, the receivers and health", function()
        local port = d:http_port()
        -- Batches retained before the page loads, so the charts have points.
        d:wait_until(function()
            local s = http.json(port, "/api/v1/statistics")
            return s.numRetainedCompletedBatches >= 10, s.numRetainedCompletedBatches
        end, 30, 0.1, "10 retained batches")
        redis:wait_len(d, "ui:out", 3, 30)
        local windows = d:wait_until(function()
            local j = http.json(port, "/api/v1/jobs/windows")
            return j.stateSize ~= cjson.null and j.stateSize > 0 and j
        end, 30, 0.1, "the windows job's state")
        d:wait_until(function()
            local r = http.json(port, "/api/v1/receivers")
            for _, x in ipairs(r) do
                if x.job == "queue" then
                    return x.lag == 0
                end
            end
        end, 30, 0.1, "the queue job's lag of 0")
        d:wait_until(function()
            local t = http.json(port, "/api/v1/jobs/lookup").tables or {}
            return t[1] and t[1].loaded and t[2] and t[2].loaded, cjson.encode(t)
        end, 30, 0.1, "the lookup job's tables loaded")
        os.remove(d:path("later.tsv"))
        d:wait_until(function()
            local t = http.json(port, "/api/v1/jobs/lookup").tables or {}
            return t[2] and t[2].stale and t[2].loadErrors > 0, cjson.encode(t)
        end, 30, 0.1, "the later table stale")
        -- the windows job's first batches (its state files) may run late on a
        -- loaded machine: the page is read once the driver is ready again
        d:wait_until(function()
            return http.request(port, "GET", "/readyz") == 200
        end, 30, 0.1, "/readyz 200")
        local code, page, headers = http.request(port, "GET", "/")
        assert.equal(200, code)
        assert.truthy(headers["content-type"]:find("text/html", 1, true))
        -- It loads nothing from the network: the one URL in it is SVG's namespace name.
        for url in page:gmatch("https?://[^\"'%s]*") do
            assert.equal("http://www.w3.org/2000/svg", url)
        end

        local dom = chromium(d, "http://127.0.0.1:" .. port .. "/", "--dump-dom")
        assert.truthy(dom:find('data-loaded="true"', 1, true),
                      "the page's script did not finish:\n" .. dom:sub(1, 2000))
        for _, name in ipairs({ "fast", "slow" }) do
            local section = dom:match('<section class="job" data%-job="' .. name .. '">(.-)</section>')
            assert.truthy(section, "no section for job " .. name)
            for _, metric in ipairs({ "input-rate", "scheduling-delay", "processing-time", "total-delay" }) do
                local svg = section:match('data%-metric="' .. metric:gsub("%-", "%%-") .. '"(.-)</svg>')
                assert.truthy(svg, name .. ": no " .. metric .. " chart")
                local n = tonumber(svg:match('data%-points="(%d+)"'))
                assert.truthy(n and n >= 10, name .. " " .. metric .. ": " .. tostring(n) .. " points")
                local pts = svg:match('points="([^"]*)"')
                local count = select(2, pts:gsub("[%d.]+,[%d.]+", ""))
                assert.equal(n, count)
            end
            assert.truthy(dom:find('<tr class="job%-row" data%-job="' .. name .. '"><td>' .. name
                                   .. '</td><td class="state%-running">running</td>'), name .. " row")
        end
        assert.truthy(dom:find("fast/1 generator", 1, true))
        -- the windows job's late records (0) and its state size
        local cells = dom:match('<tr class="job%-row" data%-job="windows">(.-)</tr>')
        assert.truthy(cells, "no row for the windows job")
        assert.truthy(cells:find('<td class="num late%-records">0</td>'), cells)
        local size = cells:match('<td class="num state%-size">([%d,]+)</td>')
        assert.truthy(size and tonumber((size:gsub(",", ""))) > 0, cells)
        assert.equal(cjson.null, http.json(port, "/api/v1/jobs/fast").stateSize)
        assert.truthy(dom:find('<tr class="job%-row" data%-job="fast">.-<td class="num late%-records">–</td>'))
        -- the Redis list source's lag in its connector's shape
        assert.truthy(dom:find('<td class="lag">0 (list ui:in 0, processing 0)</td>', 1, true),
                      dom:match('<table id="receivers">.-</table>'))
        -- the lookup job's tables: one fresh, one stale
        local sites = dom:match('<tr class="table%-row" data%-job="lookup" data%-table="sites">(.-)</tr>')
        assert.truthy(sites, dom:match('<table id="tables">.-</table>'))
        assert.truthy(sites:find('<td class="num entries">2</td><td>yes</td><td>no</td>', 1, true), sites)
        assert.truthy(sites:find('<td class="num load%-errors">0</td>'), sites)
        local later = dom:match('<tr class="table%-row" data%-job="lookup" data%-table="later">(.-)</tr>')
        assert.truthy(later, dom:match('<table id="tables">.-</table>'))
        assert.truthy(later:find('<td class="num entries">1</td><td>yes</td>'
                                 .. '<td class="state-failed">stale</td><td>20', 1, true), later)
        assert.truthy(later:find('<td class="err">[^<]*later%.tsv'), later)
        -- the sink pool
        local pool = dom:match('<tr class="pool%-row">(.-)</tr>')
        assert.truthy(pool and pool:find("redis redis://127.0.0.1:" .. redis.port, 1, true), tostring(pool))
        -- Readiness shows as the driver says it at the page's load: on a
        -- loaded machine a late batch can make it flip for a moment, so the
        -- page is loaded again until it shows ready.
        d:wait_until(function()
            if dom:find('class="health-ok">ready<', 1, true) then
                return true
            end
            dom = chromium(d, "http://127.0.0.1:" .. port .. "/", "--dump-dom")
            return false, dom:match('<[^>]*class="health%-[^"]*"[^>]*>[^<]*<') or dom:sub(1, 500)
        end, 60, 0.5, "the page showing ready")

        os.execute("mkdir -p '" .. ARTIFACTS .. "'")
        local shot = ARTIFACTS .. "/ui.png"
        os.remove(shot)
        chromium(d, "http://127.0.0.1:" .. port .. "/", "--screenshot=" .. shot)
        local png = driver.read_file(shot)
        assert.truthy(png and #png > 10000 and png:sub(2, 4) == "PNG", "no screenshot at " .. shot)
    end)
end)
