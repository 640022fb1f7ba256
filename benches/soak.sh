#!/usr/bin/env bash
# Soak: a stepgate server under steady load for a long time, watched every
# slice. It measures the server's peak Decide throughput (closed loop, as
# fast as answers come), then drives it at a share of that peak (70% by
# default), evenly paced, for the soak's length, and every slice (10 s)
# records the errors, p50/p99 latency and the server's resident memory.
#
#   benches/soak.sh                      # 10 minutes at 70% of peak, release build
#   SOAK_MINUTES=1 benches/soak.sh       # shorter
#
# Settings (environment): SOAK_MINUTES (10), SOAK_SHARE (0.7),
# SOAK_SLICE_SECS (10), SOAK_PROTOCOL (grpc; or http, authzen),
# SOAK_USERS (100000), SOAK_CONCURRENCY (64), SOAK_P99_FACTOR (2),
# SOAK_RSS_SLACK_MIB (8), SOAK_BIN (a stepgate binary; default: build and
# use the release one under CARGO_TARGET_DIR or target/), SOAK_OUT (a directory for
# soak.csv and the server's logs; default: a new temporary one).
#
# The verdict at the end holds the soak to its targets and exits 1 when one
# is missed: no errors; the mean resident memory of the last quarter of
# slices is at most 10% (or SOAK_RSS_SLACK_MIB) above that of the second
# quarter (the
# first is warm-up); the p99 of the last
# quarter of slices is at most SOAK_P99_FACTOR (2) times that of the
# second quarter.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=${SOAK_MINUTES:-10}
share=${SOAK_SHARE:-0.7}
slice=${SOAK_SLICE_SECS:-10}
protocol=${SOAK_PROTOCOL:-grpc}
users=${SOAK_USERS:-100000}
concurrency=${SOAK_CONCURRENCY:-64}
out=${SOAK_OUT:-$(mktemp -d -t stepgate-soak.XXXXXX)}
mkdir -p "$out"

if [ -n "${SOAK_BIN:-}" ]; then
  bin=$SOAK_BIN
else
  cargo build --release --locked --quiet
  bin=${CARGO_TARGET_DIR:-target}/release/stepgate
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
grpc_port=$(free_port)
http_port=$(free_port)
admin_port=$(free_port)

# The decision log is on (its cost is part of serving) and thrown away:
# ten minutes of it would fill a disk.
"$bin" serve --listen "127.0.0.1:$grpc_port" --http-listen "127.0.0.1:$http_port" \
  --admin-listen "127.0.0.1:$admin_port" >/dev/null 2>"$out/server.log" &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$admin_port/readyz', timeout=1)" 2>/dev/null; then
    break
  fi
  sleep 0.1
done

load() {
  "$bin" loadtest --protocol "$protocol" --target "http://127.0.0.1:$grpc_port" \
    --http-target "http://127.0.0.1:$http_port" --users "$users" \
    --concurrency "$concurrency" --check-duration 0s --json "$@"
}

rss_kib() {
  awk '/^VmRSS:/ { print $2 }' "/proc/$server/status"
}

echo "== measuring peak ($protocol, concurrency $concurrency, users $users; priming every user's devices first)"
load --duration 10s --warmup 2s >"$out/peak.json"
peak=$(python3 -c "import json; print(json.load(open('$out/peak.json'))['decide']['per_second'])")
rate=$(python3 -c "print(max(1, int($peak * $share)))")
slices=$(python3 -c "import math; print(max(1, math.ceil($minutes * 60 / $slice)))")
echo "peak ${peak%.*} decisions/s; soaking at $rate/s (${share} of peak) for $slices slices of ${slice}s"

echo "slice,seconds,requests,errors,report_errors,p50_us,p99_us,max_us,rss_kib" >"$out/soak.csv"
start=$(date +%s)
for i in $(seq 1 "$slices"); do
  load --no-prime --warmup 0s --duration "${slice}s" --rate "$rate" >"$out/slice.json"
  rss=$(rss_kib)
  python3 - "$out/slice.json" "$i" "$(($(date +%s) - start))" "$rss" >>"$out/soak.csv" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
d = report["decide"]
reports = report.get("report") or {}
errors = sum(d["errors"].values())
report_errors = sum((reports.get("errors") or {}).values())
print(",".join(str(v) for v in [sys.argv[2], sys.argv[3], d["requests"], errors, report_errors,
                                d["latency_us"]["p50"], d["latency_us"]["p99"], d["latency_us"]["max"], sys.argv[4]]))
EOF
  tail -1 "$out/soak.csv" | awk -F, '{ printf "slice %3d  t=%4ss  %7d decisions  errors %d/%d  p50 %5d us  p99 %6d us  rss %6.1f MiB\n", $1, $2, $3, $4, $5, $6, $7, $9 / 1024 }'
done

echo "== verdict (data: $out/soak.csv)"
python3 - "$out/soak.csv" "${SOAK_P99_FACTOR:-2}" "${SOAK_RSS_SLACK_MIB:-8}" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
n = len(rows)
errors = sum(int(r["errors"]) + int(r["report_errors"]) for r in rows)
quarter = max(1, n // 4)
warm = rows[quarter - 1] if n > 1 else rows[0]
# Caches at their bounds evict in batches, so resident memory saws up and
# down; a leak shows as the level rising. Compare the mean of the last
# quarter with the mean of the second (the first is warm-up).
def mean_kib(part):
    return sum(int(r["rss_kib"]) for r in part) / len(part)
rss_second = mean_kib(rows[quarter:2 * quarter] or rows)
rss_last = mean_kib(rows[-quarter:])
rss_max = max(int(r["rss_kib"]) for r in rows)
allowed = max(rss_second * 1.10, rss_second + float(sys.argv[3]) * 1024)
second = rows[quarter:2 * quarter] or rows
last = rows[-quarter:]
p99_second = max(int(r["p99_us"]) for r in second)
p99_last = max(int(r["p99_us"]) for r in last)
ok = True
def check(good, text):
    global ok
    ok = ok and good
    print(("pass  " if good else "FAIL  ") + text)
check(errors == 0, f"errors: {errors}")
check(rss_last <= allowed,
      f"resident memory: second quarter mean {rss_second / 1024:.1f} MiB, last quarter mean {rss_last / 1024:.1f} MiB (allowed {allowed / 1024:.1f}), highest {rss_max / 1024:.1f} MiB")
factor = float(sys.argv[2])
check(p99_last <= factor * max(p99_second, 1),
      f"p99: second quarter at most {p99_second} us, last quarter at most {p99_last} us (allowed {factor:g}x)")
sys.exit(0 if ok else 1)
EOF
