#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, docs, the crate
# dependency rules, every test of the workspace, then each fuzz target for
# a bounded time (FUZZ_SECONDS, default 30; 0 skips).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
echo "== crate dependency direction"
scripts/check-deps.py
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# cargo's last line is often a doc-test run of 0 tests; close with the total.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
[ "$status" -eq 0 ] || exit "$status"
seconds=${FUZZ_SECONDS:-30}
if [ "$seconds" -gt 0 ]; then
  echo "== fuzz, ${seconds}s per target"
  fuzz/run.sh "$seconds"
fi
