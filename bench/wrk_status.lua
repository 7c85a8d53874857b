-- wrk_status.lua: wrk script for bench/soak.sh. Counts the answers by HTTP
-- status across all threads and prints one "status CODE COUNT" line each,
-- then "socket_errors connect N read N write N timeout N".
-- With WRK_BODY set it POSTs that JSON body instead of GETting.
local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local body = os.getenv("WRK_BODY")
if body and body ~= "" then
   wrk.method = "POST"
   wrk.body = body
   wrk.headers["Content-Type"] = "application/json"
end

counts = {}

function response(status, headers, body)
   counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
   local total = {}
   for _, t in ipairs(threads) do
      for code, n in pairs(t:get("counts")) do
         total[code] = (total[code] or 0) + n
      end
   end
   for code, n in pairs(total) do
      io.write(string.format("status %d %d\n", code, n))
   end
   local e = summary.errors
   io.write(string.format("socket_errors connect %d read %d write %d timeout %d\n",
                          e.connect, e.read, e.write, e.timeout))
   io.write(string.format("latency_p50_ms %.2f\nlatency_p99_ms %.2f\n",
                          latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
