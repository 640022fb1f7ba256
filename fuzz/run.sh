#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 60) from its
# seeds in fuzz/seeds/TARGET, growing a corpus in fuzz/corpus/TARGET (not
# committed). A crash stops the run: libFuzzer writes the input to
# fuzz/artifacts/TARGET/ and prints how to reproduce it
# (`cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...`).
#
#   bash fuzz/run.sh            # 60 s each
#   bash fuzz/run.sh 3600       # an hour each
#   bash fuzz/run.sh 60 policy_dir json_request   # chosen targets
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
  cargo fuzz build --sanitizer none --release
else
  for target in "${targets[@]}"; do
    cargo fuzz build --sanitizer none --release "$target"
  done
fi
mkdir -p logs
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  echo "-- $target: ${seconds}s"
  set +e
  cargo fuzz run --sanitizer none --release "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
    -print_final_stats=1 >"logs/$target.log" 2>&1
  status=$?
  set -e
  grep -E "^stat::(number_of_executed_units|new_units_added|peak_rss_mb)" "logs/$target.log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "logs/$target.log" >&2
    echo "fuzz target $target failed (exit $status): its input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
