-- wrk script for bench/callgrind.sh: exit after BENCH_REQS responses (use one wrk thread), so
-- every measured run carries exactly that many requests. Prints "FIXED_COUNT <n>" first.
-- Requests still in flight on the other connections at that moment (at most
-- BENCH_CONNS - 1) were partly handled by the proxy and are not counted.
local target = tonumber(os.getenv("BENCH_REQS") or "10000")
local seen = 0
response = function(status, headers, body)
  seen = seen + 1
  if seen >= target then
    io.write(string.format("FIXED_COUNT %d\n", seen))
    io.flush()
    os.exit(0)
  end
end
