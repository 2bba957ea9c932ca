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
# Rounds (--rounds, 3): every point is measured once a round, the systems
# side by side (sgswitch then Open vSwitch, the other way round in the
# next round). This machine's speed moves between two levels about 1.5x
# apart over seconds, for every system alike (docs/bench/README.md), so a
# ratio is taken within a round, of two runs seconds apart, and the median
# of the rounds' ratios is reported.
#
# Output (--json): one line per point and round,
#   {"system","rules","cores","round","case","offered_mpps","mpps"}
# then per point the median over the rounds ({"rounds","mpps",
# "per_round"}), and one summary line per rule count with the issue's
# ratios (the median of the rounds' ratios, and each round's).
set -euo pipefail

json=0
seconds=5
rounds=3
systems="sgswitch ovs-dpdk"
rule_counts="10 1000"
while [ $# -gt 0 ]; do
  case $1 in
    --json) json=1 ;;
    --quick) seconds=3 ;;
    --systems) systems=$2; shift ;;
    --rules) rule_counts=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    *) echo "usage: $0 [--json] [--quick] [--systems \"...\"] [--rules \"10 1000\"] [--rounds N]" >&2; exit 2 ;;
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
emit() { # line
  echo "$1" >>"$results"
  if [ $json -eq 1 ]; then echo "$1"; else echo "$1" | sed 's/[{}"]//g'; fi
}
for rules in $rule_counts; do
  for round in $(seq "$rounds"); do
    # The systems in turn for each point, the first one swapped every
    # round: the machine's rate moves over seconds (docs/bench/README.md),
    # and two runs side by side see the same machine more often than two
    # runs a minute apart.
    order=$systems
    [ $((round % 2)) -eq 0 ] && order=$(echo "$systems" | tr ' ' '\n' | tac | tr '\n' ' ')
    for case in established new; do
      for system in $order; do
        read -r txs rxs < <(start "$system" "$rules")
        out=$(taskset -c 1 "$bin/vhostgen" --tx "$txs" --rx "$rxs" --case "$case" --seconds "$seconds" --core 1 \
          --src-mac $TX_MAC --dst-mac $RX_MAC --dport $DPORT 2>"$work/gen.log") || { cat "$work/gen.log" >&2; exit 1; }
        stop_all
        emit "$(echo "$out" | sed "s/^{/{\"system\":\"$system\",\"rules\":$rules,\"cores\":1,\"round\":$round,/")"
      done
    done
    for system in $order; do
      read -r txs rxs < <(start "$system" "$rules")
      mpps=$(testpmd "$txs" "$rxs" "$seconds")
      stop_all
      emit "{\"system\":\"$system\",\"rules\":$rules,\"cores\":1,\"round\":$round,\"case\":\"established-testpmd\",\"mpps\":$mpps}"
    done
  done
done

# Per point, the median over the rounds; per rule count, the ratios: each
# round's (the two systems' runs of a point side by side) and their median.
python3 - "$results" "$json" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
as_json = sys.argv[2] == "1"
out = lambda d: print(json.dumps(d) if as_json else " ".join(f"{k}={v}" for k, v in d.items()))
rounds = sorted({r["round"] for r in rows})
def get(s, rules, c, rnd):
    return next((r["mpps"] for r in rows if r["system"] == s and r["rules"] == rules and r["case"] == c and r["round"] == rnd), None)
def med(s, rules, c):
    v = [m for m in (get(s, rules, c, r) for r in rounds) if m is not None]
    return round(statistics.median(v), 3) if v else None
for rules in sorted({r["rules"] for r in rows}):
    for s in sorted({r["system"] for r in rows}):
        for c in ("established", "new", "established-testpmd"):
            m = med(s, rules, c)
            if m is not None:
                out({"system": s, "rules": rules, "cores": 1, "case": c, "rounds": len(rounds), "mpps": m,
                     "per_round": [get(s, rules, c, r) for r in rounds]})
for rules in sorted({r["rules"] for r in rows}):
    def ratios(c):
        v = []
        for r in rounds:
            a, b = get("sgswitch", rules, c, r), get("ovs-dpdk", rules, c, r)
            if a is not None and b:
                v.append(round(a / b, 2))
        return v
    re_, rn, rt = ratios("established"), ratios("new"), ratios("established-testpmd")
    m = lambda v: round(statistics.median(v), 2) if v else None
    sg_e, sg_n = med("sgswitch", rules, "established"), med("sgswitch", rules, "new")
    out({"summary": True, "rules": rules, "rounds": len(rounds), "sgswitch_established_mpps": sg_e, "sgswitch_new_mpps": sg_n,
         "established_vs_ovs_dpdk": m(re_), "new_vs_ovs_dpdk": m(rn), "testpmd_established_vs_ovs_dpdk": m(rt),
         "established_vs_ovs_dpdk_per_round": re_, "new_vs_ovs_dpdk_per_round": rn,
         "target_established_5mpps": sg_e is not None and sg_e >= 5.0, "target_new_2mpps": sg_n is not None and sg_n >= 2.0,
         "target_vs_ovs_1_5x": (m(re_) or 0) >= 1.5 and (m(rn) or 0) >= 1.5})
EOF
