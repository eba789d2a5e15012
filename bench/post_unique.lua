-- wrk script: like post.lua, but every request asks a different question, so a cache never hits.
-- The body in BENCH_BODY_FILE holds the placeholder __Q__ where the question goes; each request
-- puts eight random words and a counter there. Counts the x-gateway-cache answers it gets
-- (hit / semantic-hit / miss / none) and prints them with the summary.
local body_file = os.getenv("BENCH_BODY_FILE")
local f = assert(io.open(body_file, "rb"), "cannot open BENCH_BODY_FILE " .. tostring(body_file))
local template = f:read("*a")
f:close()

local headers = {["Content-Type"] = "application/json"}
local key = os.getenv("BENCH_KEY")
if key and key ~= "" then
  headers["Authorization"] = "Bearer " .. key
end

local words = {
  "river", "copper", "invoice", "glacier", "turbine", "orchard", "ledger", "harbor", "violin", "canyon",
  "pepper", "satellite", "quarry", "lantern", "meadow", "compiler", "saddle", "tunnel", "falcon", "marble",
  "voltage", "biscuit", "anchor", "pollen", "scaffold", "garnet", "kettle", "monsoon", "parcel", "quartz",
  "rudder", "spindle", "thimble", "umbrella", "walnut", "yeast", "zeppelin", "almanac", "beacon", "cobalt",
  "dolphin", "ember", "fjord", "gravel", "hammock", "iceberg", "jasmine", "kiosk", "lagoon", "mosaic",
  "nectar", "oyster", "pixel", "quiver", "raven", "sonnet", "tundra", "utensil", "vortex", "wicker",
  "xylophone", "yodel", "zinc", "acorn", "bramble", "cactus", "denim", "elbow", "fossil", "goblet",
  "helmet", "igloo", "jigsaw", "kernel", "lilac", "mantle", "nozzle", "obelisk", "pretzel", "quill",
  "rhubarb", "sundial", "trellis", "unicorn", "velvet", "windmill", "yacht", "zodiac", "asphalt", "buffalo",
  "chimney", "dynamo", "easel", "furnace", "gazebo", "hinge", "ivory", "jungle", "keyboard", "lobster",
}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
  counter, hits, semantic, misses, none = 0, 0, 0, 0, 0
end

function request()
  counter = counter + 1
  local q = {}
  for i = 1, 8 do
    q[i] = words[math.random(#words)]
  end
  local text = "Tell me about " .. table.concat(q, " ") .. " number " .. counter .. math.random(1000000)
  local body = (template:gsub("__Q__", text))
  return wrk.format("POST", nil, headers, body)
end

function response(status, hdrs, body)
  local v = hdrs["x-gateway-cache"]
  if v == "hit" then
    hits = hits + 1
  elseif v == "semantic-hit" then
    semantic = semantic + 1
  elseif v == nil then
    none = none + 1
  else
    misses = misses + 1
  end
end

function done(summary, latency, requests)
  local h, s, m, n = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    h = h + t:get("hits")
    s = s + t:get("semantic")
    m = m + t:get("misses")
    n = n + t:get("none")
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\"requests\": %d, \"duration_us\": %d, \"bytes\": %d, " ..
    "\"errors\": {\"connect\": %d, \"read\": %d, \"write\": %d, \"status\": %d, \"timeout\": %d}, " ..
    "\"latency_us\": {\"p50\": %d, \"p90\": %d, \"p99\": %d, \"p999\": %d, \"max\": %d, \"mean\": %.1f}, " ..
    "\"cache\": {\"hit\": %d, \"semantic_hit\": %d, \"miss_or_bypass\": %d, \"no_header\": %d}}\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean, h, s, m, n))
end
