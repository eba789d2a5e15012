-- wrk script: POST an OpenAI chat request; print a machine-readable summary at the end.
-- Configured through the environment (bench/run.py sets these):
--   BENCH_BODY_FILE  file holding the JSON body to send
--   BENCH_KEY        bearer key for the Authorization header (optional)
local body_file = os.getenv("BENCH_BODY_FILE")
local f = assert(io.open(body_file, "rb"), "cannot open BENCH_BODY_FILE " .. tostring(body_file))
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_KEY")
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

-- Per-thread status counts are not visible in done(); wrk's own summary counts non-2xx in
-- errors.status, which is enough to flag a target answering errors under load.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\"requests\": %d, \"duration_us\": %d, \"bytes\": %d, " ..
    "\"errors\": {\"connect\": %d, \"read\": %d, \"write\": %d, \"status\": %d, \"timeout\": %d}, " ..
    "\"latency_us\": {\"p50\": %d, \"p90\": %d, \"p99\": %d, \"p999\": %d, \"max\": %d, \"mean\": %.1f}}\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
