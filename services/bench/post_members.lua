-- wrk script of `tandem bench`: POST /api/members, a different member per request.
--
--   wrk -c 50 -t T -d S --timeout 30s --latency -s post_members.lua URL -- BODIES T TOKEN ANSWERS
--
-- BODIES holds one registration (JSON) per line; thread k of T posts lines k, k+T, k+2T, ...
-- in order. A thread that runs out starts its lines again with "-<round>" appended to each id,
-- so that every request still registers a new member (`reused` counts those requests).
-- Every response that is not a 201 is a failure (`failures`, `statuses`). For each 201 the
-- member id and the time of the response (CLOCK_MONOTONIC, Python's time.monotonic) go to
-- ANSWERS, one "id seconds" per line. done() prints one line "TANDEM-WRK {json}" with wrk's
-- exact latency percentiles (microseconds), the request count and the errors.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } tandem_timespec;
int clock_gettime(int clk_id, tandem_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local clock = ffi.new("tandem_timespec")

local function now()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
    return tonumber(clock.tv_sec) + tonumber(clock.tv_nsec) * 1e-9
end

-- The main state: number the threads and keep them for done().
local threads = {}

function setup(thread)
    thread:set("index", #threads)
    table.insert(threads, thread)
end

-- A thread's state.
local bodies, position, round = {}, 1, 0
local headers = {}
failures, reused, statuses, answered, answers_path = 0, 0, {}, {}, nil

function init(args)
    local path, count, token = args[1], tonumber(args[2]), args[3]
    answers_path = args[4]
    local line_number = 0
    for line in io.lines(path) do
        if line ~= "" then
            if line_number % count == index then
                bodies[#bodies + 1] = line
            end
            line_number = line_number + 1
        end
    end
    assert(#bodies > 0, "no bodies for thread " .. index .. " in " .. path)
    headers["Content-Type"] = "application/json"
    headers["Authorization"] = "Bearer " .. token
end

function request()
    local body = bodies[position]
    if round > 0 then
        body = string.gsub(body, '"id":%s*"([^"]*)"', '"id":"%1-' .. round .. '"', 1)
        reused = reused + 1
    end
    position = position + 1
    if position > #bodies then
        position, round = 1, round + 1
    end
    return wrk.format("POST", "/api/members", headers, body)
end

function response(status, _, body)
    if status == 201 then
        local id = string.match(body, '"id":%s*"([^"]+)"')
        if id then
            answered[#answered + 1] = string.format("%s %.6f", id, now())
        end
    else
        failures = failures + 1
        local key = tostring(status)
        statuses[key] = (statuses[key] or 0) + 1
    end
end

function done(summary, latency, _)
    local total_failures, total_reused, total_statuses = 0, 0, {}
    local path = nil
    local out = nil
    for _, thread in ipairs(threads) do
        total_failures = total_failures + thread:get("failures")
        total_reused = total_reused + thread:get("reused")
        for status, n in pairs(thread:get("statuses")) do
            total_statuses[status] = (total_statuses[status] or 0) + n
        end
        path = path or thread:get("answers_path")
        if path and not out then
            out = assert(io.open(path, "w"))
        end
        if out then
            for _, line in ipairs(thread:get("answered")) do
                out:write(line, "\n")
            end
        end
    end
    if out then
        out:close()
    end
    local parts = {}
    for status, n in pairs(total_statuses) do
        parts[#parts + 1] = string.format('"%s": %d', status, n)
    end
    local e = summary.errors
    io.write(string.format(
        'TANDEM-WRK {"requests": %d, "duration_us": %d, "failures": %d, "reused": %d, '
            .. '"statuses": {%s}, "errors": {"connect": %d, "read": %d, "write": %d, '
            .. '"status": %d, "timeout": %d}, "latency_us": {"min": %d, "mean": %.1f, '
            .. '"max": %d, "p50": %d, "p90": %d, "p99": %d, "p99.9": %d}}\n',
        summary.requests, summary.duration, total_failures, total_reused,
        table.concat(parts, ", "), e.connect, e.read, e.write, e.status, e.timeout,
        latency.min, latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
        latency:percentile(99), latency:percentile(99.9)
    ))
end
