#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, docs, the crate
# dependency rules, then every test of the workspace.
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
cargo test --workspace --locked
