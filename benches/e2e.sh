#!/usr/bin/env bash
# End to end on this machine, every system in one run, on the same core,
# each paying for its own kernel work. Root.
#
# Topology (network namespaces): sgb-gen (gen0) -- veth -- (up0) sgb-dut
# (tap-vm) -- veth -- (vm0) sgb-vm. The system under test runs in sgb-dut
# between up0 (its uplink) and tap-vm (a VM port), with 10 or 1,000 ingress
# rules of which only the last allows the traffic:
#   raw-afxdp          a plain AF_XDP forwarder, no parsing or policy (the
#                      ceiling of the port path: bound as sgswitch binds,
#                      busy-polled where the kernel can, and up0's NAPI
#                      thread yields to it as to sgswitch's loop)
#   sgswitch           `sgswitch run`, one poll loop, default settings but
#                      `fast_path = "on"`: tap-vm stands for a VM's tap, on
#                      which the XDP fast path is on by default; on a veth
#                      it needs its peer to take redirected frames, which
#                      vm0 does (the sink is an XDP program)
#   sgswitch-loop      the same with `fast_path = "off"`: every frame
#                      through the poll loop
#   bridge-nft-linear  a Linux bridge, br_netfilter, an inet nftables chain
#                      with conntrack and one rule per security-group rule
#   bridge-nft-sets    the same bridge, the rules as one concatenated
#                      interval set lookup (ip saddr . udp dport)
#   ovs-afxdp          Open vSwitch's userspace datapath with AF_XDP ports
#                      (native mode, a PMD thread) and a ct() pipeline with
#                      one OpenFlow rule per security-group rule
#   xdp-redirect       an XDP program on up0 redirecting every frame to
#                      tap-vm (no lookup, no policy): the floor of what an
#                      XDP-level fast path would cost, for comparison
#
# Fairness:
# - The system gets core 0: its threads (sgswitch's loop and the rest of
#   its threads, the forwarder, the OVS PMD and the rest of ovs-vswitchd)
#   and its ingress interface's receive work (up0 in threaded NAPI, the
#   kthread pinned to core 0). The script and its helpers run on core 1.
# - The generator (xdpgen send: XDP live frames through BPF_PROG_RUN, made
#   by the kernel, so the generator is not the bound) runs on core 1 and
#   transmits through gen0's XDP path straight into up0's receive ring.
#   Where the kernel refuses live frames (a sandbox's kernel did, EPERM),
#   xsk tx sends the same frames through an AF_XDP socket on gen0 (an skb
#   each, about 1.9 Mpps at most): every point then says
#   "generator":"af-xdp", and a system whose core sat idle a tenth of the
#   time while flooded measured the generator, not itself (the summary's
#   generator_bound; one whose core was busy was full). The sink (an XDP program
#   on vm0 that counts, files latencies and drops) runs in vm0's threaded
#   NAPI kthread, on core 1 at real-time priority: it is the measurement,
#   not the system's work. What each system pays for the
#   frames it sends into tap-vm is its own. Latency points are the
#   exception: there the sink runs in the softirq of the core that sends
#   into vm0 (see measure).
#
# Points, per system and rule count:
#   ramp        1,024 established flows paced at rising rates, until the
#               system stops delivering what it is offered
#   peak        the best delivered rate of the ramp and the overload point
#   overload    the same flows with the generator flat out
#   new         a new flow every frame, the generator flat out
#   latency     stamped frames paced at 10/50/90% of sgswitch's peak for
#               the rule count, p50 and p99 in µs (1 µs buckets), sent one
#               by one at an even rate by the generator pacing itself in
#               the kernel (xdpgen send --pps R --even --stamp: its program
#               runs flat out and sends, and stamps, each frame the moment
#               it is due), through the same path as the other points;
#               by xsk tx (see above), one by one from user space.
#
# Output (--json): one line per point,
#   {"system","rules","cores","case","offered_mpps","mpps","p50_us","p99_us","load",
#    "core_busy","core_steal","generator_core_busy","xcore_rtt_ns","core_polls","generator","round"}
# (core_busy: the share of the sink's window the system's core was busy;
# core_steal: the share the hypervisor gave to others; generator_core_busy:
# the generator's core, where the sink runs too; xcore_rtt_ns: a cache
# line's round trip between the two cores just before and just after the
# point, `xcore`: this guest's host places its vCPUs near each other, about
# 60 ns, or apart, about 340, for seconds to minutes at a time;
# core_polls: whether core 0 polled when idle, as sgswitch keeps its loop's
# core with `core_idle = "poll"` (the default, "auto", on bare metal only,
# not on a virtual machine such as this one); the other systems are measured
# with the core as the machine has it, a killed switch's setting put back
# first)
# then one summary line per rule count (benches/e2e_summary.py) with the
# issue's ratios, whether each target is met, the same ratios from the
# points measured near and from those measured apart (by_placement: there
# each of the two targets the placement moves is judged for sgswitch, met,
# and for the ceiling's new flows and the floor's p99, reachable), the
# generator and the points it bounded. Without --json, the same as text.
# `benches/e2e_summary.py --pool FILE...` gives by_placement over several
# saved runs.
#   benches/e2e.sh [--json] [--quick] [--systems "a b ..."] [--rules "10 1000"]
#                  [--cases "ramp overload new latency"] [--loads "0.1 0.5 0.9"]
#                  [--peak MPPS] [--sgswitch PATH] [--set "KEY = VALUE"]
#                  [--rounds N] [--generator live-frames|af-xdp|af-packet]
# --quick: 1,000 rules, shorter windows, a coarser ramp.
# --cases: the points to make (all by default); --loads: the latency
# points' shares of the peak; --peak: sgswitch's peak, for the latency
# points, instead of the one its ramp and overload measure; --sgswitch:
# another build of the switch (an A/B pair: run twice, alternated);
# --set: a line added to sgswitch's `[datapath]` (an A/B pair of a
# setting, as of a build; repeatable);
# --rounds: every system measured N times, the order rotated each round
# (round 1 as listed, round 2 from the second system, ...) so that no
# system always meets the machine's same minute; each point carries its
# "round", and the summary takes each point's median over the rounds.
# --generator: how frames are sent (default: live frames where the kernel
# runs them, else af-xdp): af-xdp is `xsk tx`, which the receiver's full
# ring holds back; af-packet is `xdpgen send --af-packet` (an AF_PACKET
# socket past the qdisc, `sendmmsg`), which drops what a full ring
# refuses, as live frames do, and whose skbs' destructor takes no lock
# (xsk tx's takes the socket's completion lock, on the system's core,
# against the generator's), but makes about 1.05 Mpps at most here.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/rules.sh
. benches/rules.sh
json=0; warm=1; window=2; ramp="0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 1.0 1.2"; rule_counts="10 1000"
cases="ramp overload new latency"; loads="0.1 0.5 0.9"; peak=""; sg_bin=""; sg_set=""; rounds=1; round=1; sender=""
systems="sgswitch sgswitch-loop raw-afxdp bridge-nft-linear bridge-nft-sets ovs-afxdp xdp-redirect"
while [ $# -gt 0 ]; do
  case $1 in
    --json) json=1 ;;
    --quick) warm=0.5; window=1; ramp="0.2 0.4 0.6 0.8 1.0"; rule_counts="1000" ;;
    --systems) systems=$2; shift ;;
    --rules) rule_counts=$2; shift ;;
    --cases) cases=$2; shift ;;
    --loads) loads=$2; shift ;;
    --peak) peak=$2; shift ;;
    --sgswitch) sg_bin=$(realpath "$2"); shift ;;
    --set) sg_set+="$2"$'\n'; shift ;;
    --rounds) rounds=$2; shift ;;
    --generator) sender=$2; shift ;;
    *) echo "usage: benches/e2e.sh [--json] [--quick] [--systems LIST] [--rules LIST] [--cases LIST] [--loads LIST] [--peak MPPS] [--sgswitch PATH] [--set \"KEY = VALUE\"] [--rounds N] [--generator live-frames|af-xdp|af-packet]" >&2; exit 1 ;;
  esac
  shift
done
[ "$(id -u)" -eq 0 ] || { echo "e2e.sh: run as root (it creates network namespaces)" >&2; exit 2; }
# The script itself, and every helper it runs (python3, grep, sleep), on
# the generator's core: nothing of the harness runs beside the system
# under test, which would preempt it (or, at idle priority, its NAPI
# thread) at random. Each system is pinned to core 0 where it starts.
taskset -pc 1 $$ >/dev/null
scripts/setup.sh
need=()
command -v nft >/dev/null || need+=(nftables)
command -v ovs-vswitchd >/dev/null || need+=(openvswitch-switch)
command -v chrt >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  # Debian starts the OVS service on install; this script runs its own.
  printf '#!/bin/sh\nexit 101\n' >/tmp/sgb-policy-rc.d
  chmod +x /tmp/sgb-policy-rc.d
  [ -e /usr/sbin/policy-rc.d ] || cp /tmp/sgb-policy-rc.d /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  cmp -s /tmp/sgb-policy-rc.d /usr/sbin/policy-rc.d && rm -f /usr/sbin/policy-rc.d
fi
cargo build --quiet --release --locked -p sgswitch -p sgswitch-benches --bin sgswitch --bin xsk --bin xdpgen --bin xcore
sg=${sg_bin:-$PWD/target/release/sgswitch}
xsk=$PWD/target/release/xsk
gen=$PWD/target/release/xdpgen
xcore=$PWD/target/release/xcore
work=$(mktemp -d)
points=$work/points.jsonl
GEN_MAC=02:00:00:00:e0:01 VM_MAC=02:00:00:00:00:21 VM_IP=10.9.0.21 SRC_IP=198.51.100.10 DPORT=9000
ct_max=$(cat /proc/sys/net/netfilter/nf_conntrack_max 2>/dev/null || echo "")
# The generator: live frames where the kernel runs them, else xsk tx
# (--generator picks one; see the header).
if [ -z "$sender" ]; then
  if "$gen" live 2>/dev/null; then sender=live-frames; else sender=af-xdp; fi
fi
case $sender in
  live-frames) "$gen" live || { echo "e2e.sh: this kernel refuses live frames" >&2; exit 2; } ;;
  af-xdp|af-packet) ;;
  *) echo "e2e.sh: --generator live-frames, af-xdp or af-packet" >&2; exit 1 ;;
esac
[ $json -eq 1 ] || echo "e2e.sh: generator: $sender" >&2

down() {
  pkill -f "ovs-vswitchd unix:$work" 2>/dev/null || true
  pkill -f "ovsdb-server $work" 2>/dev/null || true
  for n in sgb-gen sgb-dut sgb-vm; do ip netns del "$n" 2>/dev/null || true; done
  # Namespaces and their devices go away asynchronously: wait for them.
  for _ in $(seq 50); do
    ls /run/netns/sgb-* >/dev/null 2>&1 || break
    sleep 0.1
  done
  sleep 0.3
}
cleanup() {
  pkill -f "$xsk fwd" 2>/dev/null || true
  pkill -f "$sg run $work" 2>/dev/null || true
  pkill -f "$gen " 2>/dev/null || true
  down
  [ -z "$ct_max" ] || echo "$ct_max" >/proc/sys/net/netfilter/nf_conntrack_max 2>/dev/null || true
  # The run's points outlive it (a run that failed half way still has them).
  cp "$points" /tmp/sgswitch-e2e-points.jsonl 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

up() {
  down
  for n in sgb-gen sgb-dut sgb-vm; do ip netns add "$n"; ip -n "$n" link set lo up; done
  ip link add gen0 netns sgb-gen type veth peer name up0 netns sgb-dut
  ip link add vm0 netns sgb-vm type veth peer name tap-vm netns sgb-dut
  ip -n sgb-gen link set gen0 address $GEN_MAC
  ip -n sgb-vm link set vm0 address $VM_MAC
  for l in "sgb-gen gen0" "sgb-vm vm0" "sgb-dut up0" "sgb-dut tap-vm"; do
    set -- $l
    ip -n "$1" link set "$2" up
  done
  # Frames xsk tx sends (where live frames are refused) must reach up0's
  # NAPI as live frames do, for every system: veth hands an skb to the
  # peer's NAPI only if it could be aggregated, which TSO on the sender
  # rules out; with TSO the bridge would forward in the sender's context,
  # on the generator's core. (Live frames do not pass through it.)
  ip netns exec sgb-gen ethtool -K gen0 tso off gso off >/dev/null
  # No IPv6 chatter from the namespaces' own stacks into the measurement.
  for l in "sgb-gen gen0" "sgb-vm vm0" "sgb-dut up0" "sgb-dut tap-vm"; do
    set -- $l
    ip netns exec "$1" sysctl -qw "net.ipv6.conf.$2.disable_ipv6=1"
  done
}

# Threaded NAPI for an interface: set before a system starts (as an
# operator would); after it starts, its kthreads are pinned, up0's to the
# system's core, vm0's (the sink) to the generator's at real-time priority.
# A busy-polling system (sgswitch, the forwarder) turns threaded NAPI off
# on the interfaces it polls, and does their receive work in its own loop,
# on its own core; then there is no kthread to pin.
threaded() { # ns iface
  ip netns exec "$1" sh -c "echo 1 > /sys/class/net/$2/threaded"
}
pin_napi() { # ns iface core [rt]
  [ "$(ip netns exec "$1" cat /sys/class/net/$2/threaded)" = 0 ] && return 0
  local pids=""
  for _ in $(seq 20); do
    pids=$(pgrep "^napi/$2-" || true)
    [ -n "$pids" ] && break
    sleep 0.05
  done
  [ -n "$pids" ] || { echo "e2e.sh: no NAPI thread for $2 (is NAPI enabled on it?)" >&2; exit 2; }
  for p in $pids; do
    taskset -pc "$3" "$p" >/dev/null
    [ "${4:-}" = rt ] && chrt -f -p 50 "$p"
  done
  return 0
}

# The configuration: one VM port, one group of $1 ingress rules; only the
# last allows the generator's traffic.
sg_config() { # rules dir fast_path
  local rules=$1 d=$2 fast=$3
  mkdir -p "$d/ports" "$d/groups"
  cat >"$d/host.toml" <<EOF
[uplink]
interface = "up0"
[datapath]
cores = [0]
fast_path = "$fast"
$sg_set[metrics]
listen = "127.0.0.1:19480"
[control]
socket = "$d/control.sock"
[limits]
rules_per_group = 2000
rules_per_port = 2000
EOF
  cat >"$d/ports/eni-vm.toml" <<EOF
id = "eni-vm"
interface = "tap-vm"
mac = "$VM_MAC"
ipv4 = ["$VM_IP"]
security_groups = ["sg-bench"]
EOF
  bench_group "$rules" "198.51.100.0/24" "$DPORT" >"$d/groups/sg-bench.toml"
}

# The same rules for nftables, in the same order, with conntrack. One-way
# UDP never becomes "established" in netfilter (no reply), so the chain
# also accepts `ct status confirmed` (a flow whose first packet the rules
# accepted), which is what the switch's connection table does.
nft_linear() { # rules
  local rules=$1
  echo "table inet sgbench {"
  echo "  chain forward {"
  echo "    type filter hook forward priority 0; policy drop;"
  echo "    ct state established,related accept"
  echo "    ct status confirmed accept"
  for i in $(seq 1 $((rules - 1))); do
    echo "    ip saddr 203.0.113.0/24 udp dport $((1000 + i)) ct state new accept"
  done
  echo "    ip saddr 198.51.100.0/24 udp dport $DPORT ct state new accept"
  echo "  }"
  echo "}"
}

# The rules as one concatenated interval set lookup, with conntrack (the
# bridge family's own conntrack is not built into this kernel, so bridged
# traffic takes br_netfilter into the inet hooks, as for the linear chain).
nft_sets() { # rules
  local rules=$1
  echo "table inet sgbench {"
  echo "  set rules {"
  echo "    type ipv4_addr . inet_service"
  echo "    flags interval"
  printf "    elements = { "
  for i in $(seq 1 $((rules - 1))); do printf "203.0.113.0/24 . %d, " $((1000 + i)); done
  echo "198.51.100.0/24 . $DPORT }"
  echo "  }"
  echo "  chain forward {"
  echo "    type filter hook forward priority 0; policy drop;"
  echo "    ct state established,related accept"
  echo "    ct status confirmed accept"
  echo "    ip saddr . udp dport @rules ct state new accept"
  echo "  }"
  echo "}"
}

# The rules as OpenFlow (benches/rules.sh), from the uplink to the VM.
ovs_flows() { # rules
  bench_flows "$1" up0 tap-vm "198.51.100.0/24" "$DPORT"
}

start_ovs() { # rules
  local d=$work/ovs
  rm -rf "$d"; mkdir -p "$d"
  local env="OVS_RUNDIR=$d OVS_LOGDIR=$d OVS_DBDIR=$d OVS_SYSCONFDIR=$d"
  ovsdb-tool create "$d/conf.db" /usr/share/openvswitch/vswitch.ovsschema
  ip netns exec sgb-dut env $env taskset -c 0 ovsdb-server "$d/conf.db" --remote="punix:$d/db.sock" \
    --pidfile="$d/ovsdb.pid" --detach --log-file="$d/ovsdb.log" 2>/dev/null
  local vsctl="ovs-vsctl --db=unix:$d/db.sock"
  $vsctl --no-wait init
  $vsctl --no-wait set Open_vSwitch . other_config:pmd-cpu-mask=0x1 other_config:dpdk-init=false
  ip netns exec sgb-dut env $env taskset -c 0 ovs-vswitchd "unix:$d/db.sock" \
    --pidfile="$d/vswitchd.pid" --detach --log-file="$d/vswitchd.log" 2>/dev/null
  $vsctl add-br br0 -- set bridge br0 datapath_type=netdev
  for p in up0 tap-vm; do
    $vsctl add-port br0 $p -- set interface $p type=afxdp options:xdp-mode=native options:n_rxq=1
  done
  ovs_flows "$1" >"$d/flows"
  ovs-ofctl del-flows br0 2>/dev/null || true
  ip netns exec sgb-dut env $env ovs-ofctl add-flows "unix:$d/br0.mgmt" "$d/flows"
  # Every thread of the daemon on the system's core (the PMD is pinned by
  # the mask; its other threads too).
  for t in $(ls /proc/"$(cat "$d/vswitchd.pid")"/task); do taskset -pc 0 "$t" >/dev/null 2>&1 || true; done
  for _ in $(seq 50); do
    ip netns exec sgb-dut ip link show up0 | grep -q xdp && break
    sleep 0.1
  done
  # The mode OVS got (its users ask for native; it may fall back).
  local mode
  mode=$($vsctl get interface up0 status:xdp-mode 2>/dev/null || echo unknown)
  [ $json -eq 1 ] || echo "ovs-afxdp: up0 in XDP mode $mode" >&2
}

# One point: the sink counts over $window seconds after $warm; the
# generator runs throughout. Prints "mpps offered p50 p99".
measure() { # generator-args...
  local total
  total=$(python3 -c "print($warm + $window + 0.4)")
  ip netns exec sgb-vm taskset -c 1 "$gen" sink vm0 --warmup "$warm" --seconds "$window" >"$work/sink.out" &
  local sink=$!
  for _ in $(seq 50); do grep -q attached "$work/sink.out" 2>/dev/null && break; sleep 0.02; done
  # For rates, the sink's work is kept off the system's core. For
  # latency, waking a kthread on the generator's core (busy in its
  # syscall) costs 25-30 us, more than a switch: the sink then runs where
  # the frame is delivered, in the system's softirq (an XDP count and
  # drop, a few hundred ns a frame).
  case " $* " in
    *" --stamp "*) ip netns exec sgb-vm sh -c "echo 0 > /sys/class/net/vm0/threaded" ;;
    *) threaded sgb-vm vm0; pin_napi sgb-vm vm0 1 rt ;;
  esac
  # The two cores' time over the sink's window (from /proc/stat, in
  # jiffies): how busy the system's core was, how much of it the
  # hypervisor took (steal), and how busy the generator's core was.
  (sleep "$warm"; head -3 /proc/stat; sleep "$window"; head -3 /proc/stat) >"$work/cpu.out" &
  local cpu=$!
  local send=("$gen" send gen0)
  case $sender in
    af-xdp) send=("$xsk" tx gen0) ;;
    af-packet) send=("$gen" send gen0 --af-packet) ;;
  esac
  ip netns exec sgb-gen taskset -c 1 "${send[@]}" --src-mac $GEN_MAC --dst-mac $VM_MAC --src $SRC_IP --dst $VM_IP \
    --dport $DPORT --seconds "$total" "$@" >"$work/gen.out" || true
  wait "$sink" || true
  wait "$cpu" || true
  local stamped=0
  case " $* " in *" --stamp "*) stamped=1 ;; esac
  # A point that failed (its generator or sink said why on stderr) is
  # recorded with nulls; the run goes on.
  python3 - "$work/sink.out" "$work/gen.out" "$stamped" "$work/cpu.out" <<'EOF'
import json, sys
def cores(path):
    # Per core: (busy, steal) shares of the window; idle and iowait are
    # not busy, steal is time the hypervisor ran something else.
    try:
        rows = [l.split() for l in open(path) if l.startswith("cpu") and not l.startswith("cpu ")]
        first, last = rows[: len(rows) // 2], rows[len(rows) // 2 :]
        out = []
        for a, b in zip(first, last):
            d = [int(y) - int(x) for x, y in zip(a[1:9], b[1:9])]
            total = sum(d)
            out.append((round((total - d[3] - d[4] - d[7]) / total, 3), round(d[7] / total, 3)) if total else ("null", "null"))
        return out[0], out[1]
    except (ValueError, IndexError, OSError):
        return ("null", "null"), ("null", "null")
(busy, steal), (gen_busy, _) = cores(sys.argv[4])
try:
    s = json.loads(open(sys.argv[1]).read().splitlines()[-1])
    g = json.loads(open(sys.argv[2]).read())
except (ValueError, IndexError, OSError):
    print("null null null null", busy, steal, gen_busy)
    sys.exit(0)
stamped = sys.argv[3] == "1"
q = lambda k: s[k] if stamped and s[k] is not None else "null"
print(s["mpps"], g["mpps"], q("p50_us"), q("p99_us"), busy, steal, gen_busy)
EOF
}

# The two cores' distance (see benches/src/bin/xcore.rs): a cache line's
# round trip between them in ns, about 20 ms of both cores, at real-time
# priority so that a system that polls (Open vSwitch's PMD) does not
# stretch it.
xrtt() {
  chrt -f 1 "$xcore" 0 1 --trips 20000 2>/dev/null | sed -n 's/.*"rtt_ns":\([0-9]*\).*/\1/p' | grep . || echo null
}

# Whether core 0 polls when idle (its PM QoS resume latency is 0, "n/a":
# sgswitch's `core_idle = "poll"` while it runs): true or false.
core_polls() {
  [ "$(cat /sys/devices/system/cpu/cpu0/power/pm_qos_resume_latency_us 2>/dev/null)" = n/a ] && echo true || echo false
}

# Puts back what a killed sgswitch left on a core it kept polling (a test
# suite's switches are killed): every system is measured with the cores
# as the machine has them, but for what a system sets itself.
cores_as_they_were() {
  local f
  for f in /run/sgswitch/cores/cpu[0-9]*; do
    case $f in *.lock | *"[0-9]*") continue ;; esac
    # The core's turn, then the record unless a live switch holds it.
    flock -x "$f.lock" flock -xn "$f" bash -c '
      v=$(sed -n "s/^pm_qos_resume_latency_us=//p" "$1")
      [ -z "$v" ] || { echo "$v" >"/sys/devices/system/cpu/${1##*/}/power/pm_qos_resume_latency_us" && : >"$1"; }' _ "$f" || true
  done
}

point() { # system rules case load generator-args...
  local system=$1 rules=$2 case=$3 load=$4 m o p50 p99 busy steal gen_busy x0 x1 polls
  shift 4
  x0=$(xrtt)
  polls=$(core_polls)
  read -r m o p50 p99 busy steal gen_busy <<<"$(measure "$@")"
  x1=$(xrtt)
  echo "{\"system\":\"$system\",\"rules\":$rules,\"cores\":1,\"case\":\"$case\",\"load\":$load,\"offered_mpps\":$o,\"mpps\":$m,\"p50_us\":$p50,\"p99_us\":$p99,\"core_busy\":$busy,\"core_steal\":$steal,\"generator_core_busy\":$gen_busy,\"xcore_rtt_ns\":[$x0,$x1],\"core_polls\":$polls,\"generator\":\"$sender\",\"round\":$round}" >>"$points"
  [ $json -eq 1 ] || printf '%-18s rules %5d  %-9s %5s  offered %6s  delivered %6s Mpps  p50 %5s  p99 %5s us  core busy %5s steal %5s  generator core %5s\n' "$system" "$rules" "$case" "$load" "$o" "$m" "$p50" "$p99" "$busy" "$steal" "$gen_busy" >&2
  echo "$m $o"
}

# Starts a system in sgb-dut (after `up`), its ingress on core 0.
start() { # system rules
  # NAPI on up0 (GRO on a veth enables it; frames from the generator's XDP
  # need it) in a thread, before the system starts.
  ip netns exec sgb-dut ethtool -K up0 gro on >/dev/null
  threaded sgb-dut up0
  case $1 in
    raw-afxdp)
      ip netns exec sgb-dut taskset -c 0 "$xsk" fwd up0 tap-vm --core 0 --seconds 100000 >/dev/null 2>&1 &
      sleep 0.5 ;;
    sgswitch|sgswitch-loop)
      local d=$work/cfg-$2 fast=on
      [ "$1" = sgswitch-loop ] && fast=off
      rm -rf "$d"; sg_config "$2" "$d" "$fast"
      ip netns exec sgb-dut taskset -c 0 "$sg" run "$d" 2>"$work/sgswitch.log" &
      for _ in $(seq 100); do grep -q "running on" "$work/sgswitch.log" && break; sleep 0.1; done
      grep -q "running on" "$work/sgswitch.log" || { cat "$work/sgswitch.log" >&2; exit 2; } ;;
    bridge-nft-linear|bridge-nft-sets)
      ip -n sgb-dut link add br0 type bridge
      ip -n sgb-dut link set up0 master br0
      ip -n sgb-dut link set tap-vm master br0
      ip -n sgb-dut link set br0 up
      bridge -n sgb-dut fdb replace $VM_MAC dev tap-vm master static
      modprobe br_netfilter 2>/dev/null || true
      ip netns exec sgb-dut sysctl -qw net.bridge.bridge-nf-call-iptables=1
      if [ "$1" = bridge-nft-linear ]; then nft_linear "$2"; else nft_sets "$2"; fi >"$work/rules.nft"
      ip netns exec sgb-dut nft -f "$work/rules.nft" ;;
    ovs-afxdp)
      start_ovs "$2" ;;
    xdp-redirect)
      ip netns exec sgb-dut "$gen" redirect up0 tap-vm --seconds 100000 &
      sleep 0.3 ;;
  esac
  pin_napi sgb-dut up0 0
}

cores_as_they_were

# Netfilter's connection table must hold what the new-flow point makes.
[ -z "$ct_max" ] || echo 4194304 >/proc/sys/net/netfilter/nf_conntrack_max 2>/dev/null || true

has() { case " $cases " in *" $1 "*) return 0 ;; esac; return 1; }
ramp_points=$ramp
has ramp || ramp_points=""
read -ra listed <<<"$systems"
for rules in $rule_counts; do
  sg_peak=$peak
  for round in $(seq 1 "$rounds"); do
    order=()
    for i in "${!listed[@]}"; do order+=("${listed[$(((i + round - 1) % ${#listed[@]}))]}"); done
    for system in "${order[@]}"; do
      up
      start "$system" "$rules"
      best=0
      for r in $ramp_points; do
        pps=$(python3 -c "print(int($r * 1e6))")
        read -r m o <<<"$(point "$system" "$rules" ramp "$r" --flows 1024 --pps "$pps" --burst 64)"
        [ "$m" != null ] && [ "$o" != null ] || break
        best=$(python3 -c "print(max($best, $m))")
        # Saturated: it no longer delivers what it is offered.
        python3 -c "import sys; sys.exit(0 if $m < 0.9 * $o else 1)" && break
      done
      if has overload; then
        read -r m o <<<"$(point "$system" "$rules" overload null --flows 1024)"
        [ "$m" = null ] || best=$(python3 -c "print(max($best, $m))")
      fi
      if has ramp || has overload; then
        echo "{\"system\":\"$system\",\"rules\":$rules,\"cores\":1,\"case\":\"peak\",\"mpps\":$best,\"generator\":\"$sender\",\"round\":$round}" >>"$points"
        [ "$system" = sgswitch ] && [ -z "$peak" ] && sg_peak=$best
      fi
      if has new; then
        point "$system" "$rules" new null --new >/dev/null
      fi
      if has latency && [ -n "$sg_peak" ]; then
        for load in $loads; do
          pps=$(python3 -c "print(max(1000, int($sg_peak * $load * 1e6)))")
          point "$system" "$rules" latency "$load" --flows 1024 --pps "$pps" --even --stamp >/dev/null
        done
      fi
      pkill -f "$xsk fwd" 2>/dev/null || true
      pkill -f "$gen redirect" 2>/dev/null || true
      pkill -f "$sg run $work" 2>/dev/null || true
      # sgswitch puts its core's idle setting back as it ends: the next
      # system starts after that.
      for _ in $(seq 50); do pgrep -f "$sg run $work" >/dev/null || break; sleep 0.1; done
      sleep 0.3
    done
  done
done

# The summary (benches/e2e_summary.py: the ratios, the targets, and the
# same by placement).
python3 benches/e2e_summary.py "$points" "$json"
