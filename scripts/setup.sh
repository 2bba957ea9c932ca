#!/usr/bin/env bash
# Installs what the build and the tests need on a fresh Debian machine. Safe to
# run again; installs nothing that is already there.
set -euo pipefail
need=()
command -v cargo >/dev/null || { echo "setup: cargo is missing: install Rust (rustup) first" >&2; exit 2; }
command -v python3 >/dev/null || need+=(python3)
# xsk-rs builds libxdp and libbpf from source; the datapath tests and the demo
# use iproute2 (namespaces, veth), ethtool, ping and netcat; the operations
# test runs a real Prometheus (and promtool) and setpriv (util-linux); the demo
# reads the metrics with curl; libFuzzer (fuzz/) is C++, built with g++. The
# etcd client crate compiles etcd's protocol with protoc; the fleet tests run
# a real etcd cluster (etcd-server), read it with etcdctl (etcd-client) and
# make its TLS certificates with openssl.
for pkg in libelf-dev zlib1g-dev pkg-config clang g++ m4 libpcap-dev iproute2 iputils-ping netcat-openbsd ethtool prometheus util-linux curl systemd protobuf-compiler etcd-server etcd-client openssl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ! rustup component list --installed 2>/dev/null | grep -q '^clippy'; then rustup component add clippy rustfmt >/dev/null 2>&1 || true; fi
# The VM tests boot QEMU guests (scripts/guest.sh builds them with busybox);
# QEMU's graphical and firmware extras are not needed.
vm=()
for pkg in qemu-system-x86 busybox-static; do
  dpkg -s "$pkg" >/dev/null 2>&1 || vm+=("$pkg")
done
if [ ${#need[@]} -gt 0 ] || [ ${#vm[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then echo "setup: need ${need[*]} ${vm[*]}; run as root or install them" >&2; exit 2; fi
  apt-get update -qq
  [ ${#need[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  [ ${#vm[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${vm[@]}" >/dev/null
fi
