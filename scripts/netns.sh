#!/usr/bin/env bash
# The demo topology: one network namespace per VM of examples/ and one
# "internet" host behind the uplink, joined to the host by veth pairs whose
# host sides carry the interface names of examples/ (tap-web1, ...,
# sgs-uplink). The switch runs on the host side.
#   scripts/netns.sh up      create it (removes a previous one first)
#   scripts/netns.sh down    remove it
#   scripts/netns.sh recreate <vm>|uplink
#                            delete one VM's veth pair (or the uplink's) and
#                            make it again, as a VM restart does to its tap
# VMs: 10.0.0.0/16, default route via the internet host (10.0.255.1), which
# also owns 198.51.100.7 (the office prefix list) and 203.0.113.9 (a blocked
# network), so traffic can come from allowed and forbidden sources.
set -euo pipefail
P=${SGS_NS_PREFIX:-sgs}
VMS=(web1:02:00:00:00:00:11:10.0.0.11:fd00::11
     web2:02:00:00:00:00:12:10.0.0.12:fd00::12
     db1:02:00:00:00:01:21:10.0.1.21:fd00:0:0:1::21
     bastion:02:00:00:00:02:31:10.0.2.31:fd00:0:0:2::31
     lab1:02:00:00:00:03:41:10.0.3.41:fd00:0:0:3::41
     lab2:02:00:00:00:03:42:10.0.3.42:fd00:0:0:3::42)

down() {
  for v in "${VMS[@]}"; do
    name=${v%%:*}
    ip netns del "$P-$name" 2>/dev/null || true
    ip link del "tap-$name" 2>/dev/null || true
  done
  ip netns del "$P-inet" 2>/dev/null || true
  ip link del sgs-uplink 2>/dev/null || true
}

vm() { # name mac ipv4 ipv6
  local ns="$P-$1"
  ip netns add "$ns"
  vm_link "$@"
}

vm_link() { # name mac ipv4 ipv6: the VM's veth pair, its addresses and route
  local ns="$P-$1"
  ip link add "tap-$1" type veth peer name eth0 netns "$ns"
  ip -n "$ns" link set eth0 address "$2"
  ip -n "$ns" addr add "$3/16" dev eth0
  ip -n "$ns" addr add "$4/48" dev eth0 nodad
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  no_offload "$ns"
  ip -n "$ns" route add default via 10.0.255.1
  ip link set "tap-$1" up
  # The switch's sockets take every frame; no host stack on these.
  sysctl -qw "net.ipv6.conf.tap-$1.disable_ipv6=1"
}

# veth hands frames over with checksums left to offload (CHECKSUM_PARTIAL);
# XDP sees them unfinished and would forward bad checksums, so the senders
# compute them (a VM's virtio NIC is configured the same way).
no_offload() {
  ip netns exec "$1" ethtool -K eth0 tx off >/dev/null
}

up() {
  down
  for v in "${VMS[@]}"; do
    IFS=: read -r name m1 m2 m3 m4 m5 m6 v4 _ <<<"$v"
    v6=${v#*:*:*:*:*:*:*:*:}
    vm "$name" "$m1:$m2:$m3:$m4:$m5:$m6" "$v4" "$v6"
  done
  ip netns add "$P-inet"
  uplink_link
}

uplink_link() {
  local ns="$P-inet"
  # Two queues, as a multi-queue NIC has: the switch opens a socket on each
  # (with two poll loops, one each), and the host's flows spread over both.
  ip link add sgs-uplink numtxqueues 2 numrxqueues 2 type veth peer name eth0 numtxqueues 2 numrxqueues 2 netns "$ns"
  ip -n "$ns" link set eth0 address 02:ee:00:00:00:01
  ip -n "$ns" addr add 10.0.255.1/16 dev eth0
  ip -n "$ns" addr add 198.51.100.7/32 dev eth0
  ip -n "$ns" addr add 203.0.113.9/32 dev eth0
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  no_offload "$ns"
  ip link set sgs-uplink up
  sysctl -qw net.ipv6.conf.sgs-uplink.disable_ipv6=1
}

recreate() { # vm name or "uplink"
  if [ "$1" = uplink ]; then
    ip link del sgs-uplink 2>/dev/null || true
    uplink_link
    return
  fi
  for v in "${VMS[@]}"; do
    IFS=: read -r name m1 m2 m3 m4 m5 m6 v4 _ <<<"$v"
    [ "$name" = "$1" ] || continue
    v6=${v#*:*:*:*:*:*:*:*:}
    ip link del "tap-$name" 2>/dev/null || true
    vm_link "$name" "$m1:$m2:$m3:$m4:$m5:$m6" "$v4" "$v6"
    return
  done
  echo "netns.sh: no VM $1" >&2
  return 2
}

"${1:?usage: netns.sh up|down|recreate <vm>|uplink}" "${@:2}"
