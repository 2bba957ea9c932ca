#!/usr/bin/env bash
# Instructions per frame of the in-memory pipeline, counted by callgrind
# (repeatable on this noisy machine, unlike time): established frames and
# new flows at 1,000 rules, 20,000 flows, 5 passes each
# (`pipeline --instructions`). Only the passes are counted (callgrind
# collects inside the bench's `measured` function), so the configuration's
# setup, whose hash tables are seeded at random, leaves the count alone.
#   benches/callgrind.sh        prints {"case":...,"instructions_per_frame":...}
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "callgrind.sh: needs valgrind" >&2; exit 2; }
cargo build --release -q -p sgswitch-benches --bin pipeline
bin=${PIPELINE_BIN:-target/release/pipeline}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for case in established new; do
  valgrind --tool=callgrind --toggle-collect='*measured*' --callgrind-out-file="$tmp/out" "$bin" --instructions "$case" 5 >"$tmp/run" 2>"$tmp/err" \
    || { cat "$tmp/err" >&2; exit 2; }
  total=$(grep -E "^summary:" "$tmp/out" | awk '{print $2}')
  frames=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['frames'])" "$tmp/run")
  python3 -c "import json,sys; print(json.dumps({'case': sys.argv[1], 'rules': 1000, 'flows': 20000, 'frames': int(sys.argv[3]), 'instructions_per_frame': round(int(sys.argv[2]) / int(sys.argv[3]), 1)}))" "$case" "$total" "$frames"
done
