#!/usr/bin/env bash
# vhost-user port to port on this machine, sgswitch and Open vSwitch with
# DPDK in one run, on the same core. Root.
#
# The guest side is vhostgen (benches/src/bin/vhostgen.rs): two virtio-net
# NICs driven from one thread on core 1 as a guest's poll-mode driver drives
# its own (the frames are in its shared memory; the system under test reads
# and writes its rings). One NIC sends 64-byte UDP frames as fast as its
# send ring takes them, the other takes what arrives. Why not DPDK's
# testpmd with net_virtio_user: its forwarding mode is one for every port
# (txonly on one port and rxonly on the other needs two processes, which
# then share core 1 in scheduler slices and drop whole rings in between),
# and its multi-flow mode sends from fixed MAC addresses to fixed
# destinations, which no security group between two ports could tell apart.
#
# Systems, each with core 0 for all of its threads:
#   sgswitch   `sgswitch run`, two vhost-user ports (server mode), one poll
#              loop; the sending port in a group that lets everything out,
#              the receiving port in one with N ingress rules of which only
#              the last allows the traffic
#   ovs-dpdk   ovs-vswitchd built with DPDK (openvswitch-switch-dpdk),
#              started by this script without systemd in a private run
#              directory, two dpdkvhostuser ports, one PMD thread on core 0,
#              and a ct() pipeline with one OpenFlow rule per security-group
#              rule (as in e2e.sh); hugepages reserved for it and released
#              after
#
# Cases: established (one flow, over and over: a warm connection) and new
# (a new flow every frame), 10 and 1,000 rules, the generator flat out;
# and established-testpmd, a cross-check of the first with DPDK's own
# virtio driver as the guest side: dpdk-testpmd with two net_virtio_user
# ports in io forwarding (what arrives on the receiving port is sent again
# on the sending one), 1,024 frames of one flow put in circulation
# (`start tx_first 32`), the rate testpmd measures on the receiving port
# over the run; it shares core 1 as vhostgen does, and its forwarding is
# part of the loop, so it is a floor for the system, not a ceiling.
#
# Output (--json): one line per point,
#   {"system","rules","cores","case","offered_mpps","mpps"}
# then one summary line per rule count with the issue's ratios.
set -euo pipefail

json=0
seconds=5
systems="sgswitch ovs-dpdk"
rule_counts="10 1000"
while [ $# -gt 0 ]; do
  case $1 in
    --json) json=1 ;;
    --quick) seconds=3 ;;
    --systems) systems=$2; shift ;;
    --rules) rule_counts=$2; shift ;;
    *) echo "usage: $0 [--json] [--quick] [--systems \"...\"] [--rules \"10 1000\"]" >&2; exit 2 ;;
  esac
  shift
done

[ "$(id -u)" -eq 0 ] || { echo "vhost.sh: needs root" >&2; exit 1; }
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
# shellcheck source=benches/rules.sh
. benches/rules.sh
# The DPDK build of ovs-vswitchd, run by its path (the package's
# alternative is left as it is: e2e.sh's AF_XDP runs use the plain one).
OVS_DPDK=/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk
if [[ " $systems " == *" ovs-dpdk "* ]] && [ ! -x $OVS_DPDK ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y openvswitch-switch-dpdk >/dev/null
fi
command -v dpdk-testpmd >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y dpdk-dev >/dev/null
cargo build --release --locked -q -p sgswitch -p sgswitch-benches --bin sgswitch --bin vhostgen
bin=$here/target/release

work=$(mktemp -d /tmp/sgvhost.XXXXXX)
UPLINK=sgh-up
TX_MAC=02:00:00:00:20:01
RX_MAC=02:00:00:00:20:02
DPORT=5001
hugepages_before=$(cat /proc/sys/vm/nr_hugepages)

cleanup() {
  stop_all
  ip link del $UPLINK 2>/dev/null || true
  echo "$hugepages_before" >/proc/sys/vm/nr_hugepages
  mountpoint -q "$work/huge" && umount "$work/huge"
  rm -rf "$work"
}
trap cleanup EXIT

stop_all() {
  [ -f "$work/sg.pid" ] && kill "$(cat "$work/sg.pid")" 2>/dev/null && sleep 0.5
  rm -f "$work/sg.pid"
  for p in vswitchd ovsdb; do
    [ -f "$work/ovs/$p.pid" ] && kill "$(cat "$work/ovs/$p.pid")" 2>/dev/null
  done
  sleep 0.5
  rm -rf "$work/ovs"
}

ip link del $UPLINK 2>/dev/null || true
ip link add $UPLINK type veth peer name $UPLINK-p
ip link set $UPLINK up; ip link set $UPLINK-p up

sg_config() { # rules dir
  local rules=$1 d=$2
  rm -rf "$d"; mkdir -p "$d/ports" "$d/groups"
  cat >"$d/host.toml" <<EOF
[uplink]
interface = "$UPLINK"
[datapath]
cores = [0]
[metrics]
listen = "127.0.0.1:19481"
[control]
socket = "$d/control.sock"
[limits]
rules_per_group = 2000
rules_per_port = 2000
EOF
  cat >"$d/ports/eni-tx.toml" <<EOF
id = "eni-tx"
kind = "vhost-user"
socket = "$d/tx.sock"
mac = "$TX_MAC"
ipv4 = ["10.2.0.0/16"]
security_groups = ["sg-out"]
EOF
  cat >"$d/ports/eni-rx.toml" <<EOF
id = "eni-rx"
kind = "vhost-user"
socket = "$d/rx.sock"
mac = "$RX_MAC"
ipv4 = ["10.3.0.2"]
security_groups = ["sg-bench"]
EOF
  printf 'id = "sg-out"\n[[egress]]\nprotocol = "all"\ndestination = "0.0.0.0/0"\n' >"$d/groups/sg-out.toml"
  bench_group "$rules" "10.2.0.0/16" "$DPORT" >"$d/groups/sg-bench.toml"
}

# The same rules as OpenFlow (benches/rules.sh), from the sending port to
# the receiving one.
ovs_flows() { # rules
  bench_flows "$1" vhu-tx vhu-rx "10.2.0.0/16" "$DPORT"
}

start() { # system rules -> prints "tx-socket rx-socket"
  local system=$1 rules=$2
  case $system in
    sgswitch)
      sg_config "$rules" "$work/sg"
      taskset -c 0 "$bin/sgswitch" run "$work/sg" 2>"$work/sg.log" &
      echo $! >"$work/sg.pid"
      for _ in $(seq 100); do grep -q "running on" "$work/sg.log" && break; sleep 0.1; done
      grep -q "running on" "$work/sg.log" || { cat "$work/sg.log" >&2; exit 1; }
      echo "$work/sg/tx.sock $work/sg/rx.sock"
      ;;
    ovs-dpdk)
      local d=$work/ovs
      rm -rf "$d"; mkdir -p "$d"
      local env="OVS_RUNDIR=$d OVS_LOGDIR=$d OVS_DBDIR=$d OVS_SYSCONFDIR=$d"
      ovsdb-tool create "$d/conf.db" /usr/share/openvswitch/vswitch.ovsschema
      env $env taskset -c 0 ovsdb-server "$d/conf.db" --remote="punix:$d/db.sock" --pidfile="$d/ovsdb.pid" --detach --log-file="$d/ovsdb.log" 2>/dev/null
      local vsctl="ovs-vsctl --db=unix:$d/db.sock"
      $vsctl --no-wait init
      $vsctl --no-wait set Open_vSwitch . other_config:dpdk-init=true other_config:pmd-cpu-mask=0x1 \
        other_config:dpdk-lcore-mask=0x1 other_config:dpdk-socket-mem=512 \
        "other_config:dpdk-extra=--no-pci --huge-dir=$work/huge --file-prefix=sgvhost"
      env $env taskset -c 0 $OVS_DPDK "unix:$d/db.sock" --pidfile="$d/vswitchd.pid" --detach --log-file="$d/vswitchd.log" 2>/dev/null
      $vsctl add-br br0 -- set bridge br0 datapath_type=netdev
      for p in vhu-tx vhu-rx; do $vsctl add-port br0 $p -- set interface $p type=dpdkvhostuser 2>/dev/null; done
      ovs_flows "$rules" >"$d/flows"
      env $env ovs-ofctl add-flows "unix:$d/br0.mgmt" "$d/flows"
      for t in $(ls /proc/"$(cat "$d/vswitchd.pid")"/task); do taskset -pc 0 "$t" >/dev/null 2>&1 || true; done
      echo "$d/vhu-tx $d/vhu-rx"
      ;;
  esac
}

# testpmd's memory: hugepages on a private mount (the system's own
# reservation is restored at exit).
mkdir -p "$work/huge"
mountpoint -q "$work/huge" || mount -t hugetlbfs nodev "$work/huge"
[ "$(cat /proc/sys/vm/nr_hugepages)" -ge 512 ] || echo 512 >/proc/sys/vm/nr_hugepages

testpmd() { # tx-socket rx-socket seconds -> prints the receiving port's Mpps
  local txs=$1 rxs=$2 secs=$3
  { sleep 4; echo "start tx_first 32"; sleep 2; echo "show port stats 1"; sleep "$secs"; echo "show port stats 1"
    sleep 0.5; echo "stop"; sleep 0.5; echo "quit"; } |
    timeout $((secs + 30)) taskset -c 1 dpdk-testpmd --lcores=0@1,1@1 --no-pci -m 256 --single-file-segments \
      --huge-dir="$work/huge" --file-prefix=sgvhost-tp \
      --vdev="net_virtio_user0,path=$txs,mac=$TX_MAC,queue_size=1024" \
      --vdev="net_virtio_user1,path=$rxs,mac=$RX_MAC,queue_size=1024" \
      -- -i --forward-mode=io --nb-cores=1 --total-num-mbufs=16384 \
      --eth-peer=0,$RX_MAC --eth-peer=1,$TX_MAC --tx-ip=10.2.0.0,10.3.0.2 --tx-udp=1024,$DPORT 2>&1 |
    awk '/Rx-pps:/ { pps = $2 } END { printf "%.3f", pps / 1e6 }'
}

results=$work/results
: >"$results"
for rules in $rule_counts; do
  for system in $systems; do
    for case in established new; do
      read -r txs rxs < <(start "$system" "$rules")
      out=$(taskset -c 1 "$bin/vhostgen" --tx "$txs" --rx "$rxs" --case "$case" --seconds "$seconds" --core 1 \
        --src-mac $TX_MAC --dst-mac $RX_MAC --dport $DPORT 2>"$work/gen.log") || { cat "$work/gen.log" >&2; exit 1; }
      stop_all
      line=$(echo "$out" | sed "s/^{/{\"system\":\"$system\",\"rules\":$rules,\"cores\":1,/")
      echo "$line" >>"$results"
      if [ $json -eq 1 ]; then echo "$line"; else echo "$system rules=$rules $case: $(echo "$out" | sed 's/[{}"]//g')"; fi
    done
    read -r txs rxs < <(start "$system" "$rules")
    mpps=$(testpmd "$txs" "$rxs" "$seconds")
    stop_all
    line="{\"system\":\"$system\",\"rules\":$rules,\"cores\":1,\"case\":\"established-testpmd\",\"mpps\":$mpps}"
    echo "$line" >>"$results"
    if [ $json -eq 1 ]; then echo "$line"; else echo "$system rules=$rules established-testpmd: mpps:$mpps"; fi
  done
done

# Ratios within this run, per rule count.
python3 - "$results" "$json" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
as_json = sys.argv[2] == "1"
for rules in sorted({r["rules"] for r in rows}):
    get = lambda s, c: next((r["mpps"] for r in rows if r["system"] == s and r["rules"] == rules and r["case"] == c), None)
    sg_e, sg_n, ovs_e, ovs_n = get("sgswitch", "established"), get("sgswitch", "new"), get("ovs-dpdk", "established"), get("ovs-dpdk", "new")
    sg_t, ovs_t = get("sgswitch", "established-testpmd"), get("ovs-dpdk", "established-testpmd")
    ratio = lambda a, b: round(a / b, 2) if a is not None and b else None
    s = {"summary": True, "rules": rules, "sgswitch_established_mpps": sg_e, "sgswitch_new_mpps": sg_n,
         "established_vs_ovs_dpdk": ratio(sg_e, ovs_e), "new_vs_ovs_dpdk": ratio(sg_n, ovs_n),
         "testpmd_established_vs_ovs_dpdk": ratio(sg_t, ovs_t),
         "target_established_5mpps": sg_e is not None and sg_e >= 5.0, "target_new_2mpps": sg_n is not None and sg_n >= 2.0,
         "target_vs_ovs_1_5x": (ratio(sg_e, ovs_e) or 0) >= 1.5 and (ratio(sg_n, ovs_n) or 0) >= 1.5}
    print(json.dumps(s) if as_json else " ".join(f"{k}={v}" for k, v in s.items()))
EOF
