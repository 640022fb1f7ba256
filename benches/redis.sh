#!/usr/bin/env bash
# Decide over gRPC with the memory store and with Redis on loopback, in one
# run: throughput and p50 / p99 at concurrency 1 and 64 (medians of rounds
# in which the two take turns), and the Redis round trips per decision
# (from stepgate_store_round_trips_total; warm-up decisions included, so a
# little above the true figure).
#
#   cargo build --release && bash benches/redis.sh
#
# Starts its own redis-server on a free port and directory, and one
# stepgate per store; stops them all on exit. Settings (environment):
#   BENCH_BIN        the stepgate binary (default: target/release/stepgate)
#   BENCH_DURATION   each measured phase (default 10s)
#   BENCH_USERS      simulated users (default 20000)
#   BENCH_ROUNDS     runs per store and concurrency, taking turns (default 3)
#   BENCH_CONCURRENCY  the concurrencies measured (default "1 64")
#   BENCH_UNIX_SOCKET  set: reach Redis through its Unix socket, not TCP
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release/stepgate}
duration=${BENCH_DURATION:-10s}
users=${BENCH_USERS:-20000}
rounds=${BENCH_ROUNDS:-3}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() { # URL
  for _ in $(seq 200); do
    curl -sf "$1" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "no answer from $1" >&2
  exit 1
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
  --unixsocket "$work/redis.sock" --unixsocketperm 700 --dir "$work" >/dev/null &
pids+=($!)
python3 -c 'import secrets; print(secrets.token_hex(32))' >"$work/hash.key"
policies=$(pwd)/policies

round_trips() { # ADMIN
  curl -sf "http://$1/metrics" | awk '/^stepgate_store_round_trips_total /{print $2}'
}

declare -A grpc_of admin_of
for store in memory redis; do
  config="$work/$store.toml"
  {
    echo "policies_dir = \"$policies\""
    echo "[decision_log]"
    echo "sink = \"off\""
    echo "[store]"
    echo "backend = \"$store\""
    echo "hash_key_file = \"$work/hash.key\""
    echo "[store.redis]"
    if [ -n "${BENCH_UNIX_SOCKET:-}" ]; then
      echo "url = \"unix://$work/redis.sock\""
    else
      echo "url = \"redis://127.0.0.1:$redis_port\""
    fi
  } >"$config"
  grpc_of[$store]="127.0.0.1:$(free_port)"
  admin_of[$store]="127.0.0.1:$(free_port)"
  RUST_LOG=warn "$bin" serve --config "$config" --listen "${grpc_of[$store]}" \
    --http-listen "127.0.0.1:$(free_port)" --admin-listen "${admin_of[$store]}" >/dev/null 2>&1 &
  pids+=($!)
  wait_for "http://${admin_of[$store]}/readyz"
  # Prime once (every user's devices signed in); the runs below do not.
  "$bin" loadtest --target "http://${grpc_of[$store]}" --users "$users" --concurrency 64 \
    --duration 2s --check-duration 0s --report-ratio 0 --json >/dev/null
done

# The two servers take turns, so a slow spell of the machine falls on both.
echo "store,concurrency,round,decisions_per_s,p50_us,p99_us,round_trips_per_decision" | tee "$work/runs.csv"
for c in ${BENCH_CONCURRENCY:-1 64}; do
  for round in $(seq "$rounds"); do
    for store in memory redis; do
      before=$(round_trips "${admin_of[$store]}")
      "$bin" loadtest --target "http://${grpc_of[$store]}" --users "$users" --concurrency "$c" \
        --duration "$duration" --warmup 1s --check-duration 0s --report-ratio 0 \
        --no-prime --json >"$work/run.json"
      after=$(round_trips "${admin_of[$store]}")
      python3 - "$work/run.json" "$store" "$c" "$round" "$before" "$after" <<'EOF_PY' | tee -a "$work/runs.csv"
import json, sys
report = json.load(open(sys.argv[1]))
decide = report["decide"]
n = decide["requests"]
errors = sum(decide["errors"].values())
if errors:
    sys.exit(f"{errors} failed requests: {decide['errors']}")
# The warm-up's decisions made round trips too: they are not in `n`.
print(f"{sys.argv[2]},{sys.argv[3]},{sys.argv[4]},{decide['per_second']:.0f},"
      f"{decide['latency_us']['p50']},{decide['latency_us']['p99']},"
      f"{(float(sys.argv[6]) - float(sys.argv[5])) / n if n else 0:.2f}")
EOF_PY
    done
  done
done

echo
echo "medians over $rounds rounds"
python3 - "$work/runs.csv" <<'EOF_PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
med = lambda store, c, field: statistics.median(
    float(r[field]) for r in rows if r["store"] == store and r["concurrency"] == c)
print("store,concurrency,decisions_per_s,p50_us,p99_us")
for c in sorted({r["concurrency"] for r in rows}, key=int):
    for store in ("memory", "redis"):
        print(f"{store},{c},{med(store, c, 'decisions_per_s'):.0f},"
              f"{med(store, c, 'p50_us'):.0f},{med(store, c, 'p99_us'):.0f}")
ratio = med("redis", "1", "p50_us") / med("memory", "1", "p50_us")
print(f"p50 at c=1, redis over memory: {ratio:.2f} (target: at most 1.5)")
EOF_PY
