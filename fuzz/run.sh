#!/usr/bin/env bash
# Fuzzes with libFuzzer on stable Rust: the libfuzzer-sys crate (the engine
# cargo-fuzz wraps) linked into binaries built with rustc's stable
# SanitizerCoverage flags, no nightly and no cargo-fuzz.
#   fuzz/run.sh [SECONDS] [TARGET...]   each target for SECONDS (default 30)
# Targets: pipeline, config, capture, ctl. Each starts from its seed corpus
# (fuzz/corpus/<target>, copied: new inputs stay out of the repository); a
# crash is written to fuzz/artifacts/<target>/ and ends the run with status
# 1: add it to fuzz/corpus/<target>/ and `cargo test -p sgswitch-fuzz`
# replays it from then on.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(pipeline config capture ctl)
triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions"
# --target keeps the flags off build scripts.
cargo build --release --locked --manifest-path libfuzzer/Cargo.toml --target "$triple" --target-dir target ${targets[@]/#/--bin }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# One target per core at a time: each is one process on one thread, and
# every target still gets its SECONDS.
fuzz() { # target
  local t=$1
  "target/$triple/release/$t" "$work/$t" -max_total_time="$seconds" -rss_limit_mb=4096 -max_len=4096 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 2>"$work/$t.log" || touch "$work/$t.failed"
}
echo "== fuzz ${targets[*]}, ${seconds}s each, $(nproc) at a time"
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "artifacts/$t"
  cp corpus/"$t"/* "$work/$t/"
  while [ "$(jobs -rp | wc -l)" -ge "$(nproc)" ]; do wait -n || true; done
  fuzz "$t" &
done
wait
status=0
for t in "${targets[@]}"; do
  echo "== fuzz $t"
  if [ -e "$work/$t.failed" ]; then
    tail -40 "$work/$t.log"
    status=1
  fi
  grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb)|Done [0-9]+ runs" "$work/$t.log" | tr '\n' ' '
  echo
done
exit "$status"
