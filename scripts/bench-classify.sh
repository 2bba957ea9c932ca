#!/usr/bin/env bash
# The classifier benchmark with DPDK's rte_acl side by side (issue 4):
# installs dpdk-dev if missing (Debian, as root), builds with the rte-acl
# feature, runs `classify`. Arguments go to the program (--json, --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! pkg-config --exists libdpdk 2>/dev/null; then
    apt-get install -y dpdk-dev pkg-config >/dev/null
fi
cargo build --locked --release -q -p sgswitch-benches --features rte-acl --bin classify
# The EAL prints its banner on stderr; the figures are on stdout.
exec ./target/release/classify "$@"
