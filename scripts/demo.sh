#!/usr/bin/env bash
# The demo: builds sgswitch, creates network namespaces for the six VMs of
# examples/ and an "internet" host behind the uplink (scripts/netns.sh),
# starts `sgswitch run` on a copy of examples/ (with the flow log of denied
# flows on), and sends traffic that the security groups allow and traffic they
# drop; shows the Prometheus metrics, `sgswitch ctl` against the running
# switch and the flow log; then stops the switch, prints the counters that
# moved, and removes everything. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (it creates network namespaces)" >&2; exit 2; }
scripts/setup.sh
cargo build --quiet --locked -p sgswitch
sg=target/debug/sgswitch
log=$(mktemp)
cfg=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill -INT "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  scripts/netns.sh down
  rm -rf "$log" "$cfg"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "${*:2}"; "${@:2}" || true; }
ns() { local ns=$1; shift; ip netns exec "sgs-$ns" "$@"; }
# A TCP connect with a 2 s timeout: prints "connected" or "no connection".
connect() { # ns [-s src] host port
  local ns=$1; shift
  if ns "$ns" nc -z -w 2 "$@" 2>/dev/null; then echo "connected"; else echo "no connection (dropped)"; fi
}

step "Validate the example host (web, db, bastion, isolated lab)" $sg check examples
scripts/netns.sh up
echo
echo "Namespaces sgs-web1 sgs-web2 sgs-db1 sgs-bastion sgs-lab1 sgs-lab2 (VMs) and sgs-inet (the uplink side)."
cp -r examples/. "$cfg"
printf '\n[flow_log]\nenabled = true\npath = "%s/denied.log"\n\n[history]\npath = "%s/history.sqlite"\n' "$cfg" "$cfg" >>"$cfg/host.toml"
echo "Running on a copy of examples/ with the flow log on, its history beside it: $cfg"
$sg run "$cfg" 2>"$log" &
pid=$!
for _ in $(seq 50); do grep -q "running on" "$log" && break; sleep 0.1; done
cat "$log"
# Listeners inside the VMs.
ns web1 sh -c 'nc -lk -p 80 >/dev/null 2>&1 &'
ns bastion sh -c 'nc -lk -p 22 >/dev/null 2>&1 &'
ns db1 sh -c 'nc -lk -p 5432 >/dev/null 2>&1 &'
ns lab2 sh -c 'nc -lk -p 8080 >/dev/null 2>&1 &'
sleep 0.3

step "Ping web1 from the internet (ICMP echo allowed): answered" ns inet ping -c 2 -i 0.2 -W 1 10.0.0.11
step "HTTP to web1 from the internet: allowed" connect inet 10.0.0.11 80
step "HTTP to web1 from the blocked network 203.0.113.0/24: dropped (deny before allow)" connect inet -s 203.0.113.9 10.0.0.11 80
step "SSH to the bastion from the office prefix list (198.51.100.7): allowed" connect inet -s 198.51.100.7 10.0.2.31 22
step "SSH to the bastion from anywhere else: dropped" connect inet 10.0.2.31 22
step "Postgres on db1 from web1 (group reference sg-web): allowed, VM to VM" connect web1 10.0.1.21 5432
step "Postgres on db1 from the internet: dropped" connect inet 10.0.1.21 5432
step "web1 to web2 (intra-group accept): ping answered" ns web1 ping -c 2 -i 0.2 -W 1 10.0.0.12
step "lab1 to lab2 port 8080 (sg-lab isolates its members): dropped" connect lab1 10.0.3.42 8080
step "Outbound SMTP from web1 (host blocked_egress tcp/25): dropped" connect web1 10.0.255.1 25

metrics() { curl -s http://127.0.0.1:9469/metrics | grep -E '^sgswitch_(packets_total\{port="eni-web1"|rule_hits_total\{group="sg-(web|ssh)".*\} [1-9]|conntrack_(entries\{port="eni-web1"|created_total)|xsk_info\{interface="tap-web1"|config_generation)'; }
step "Prometheus metrics (http://127.0.0.1:9469/metrics), a selection" metrics
step "The running switch, through its control socket" $sg ctl status
step "Its tracked flows" $sg ctl conntrack list
step "Why is SSH from elsewhere dropped? Asked of the live policy and state" \
  $sg ctl trace --port eni-bastion --direction ingress --proto tcp --remote 10.0.255.1 --local-port 22
step "The flow log of denied flows (rate-limited, one line per flow)" cat "$cfg/denied.log"
step "Both sides of every usual service between the internet and web1, from the live policy" \
  $sg ctl diagnose --from 203.0.113.9 --to eni-web1
step "What lint finds in the example groups" $sg lint "$cfg"
step "The configurations the switch applied (its history)" $sg history list "$cfg"

printf '\n\033[1m== Stop the switch (SIGINT): the counters that moved\033[0m\n'
kill -INT "$pid"
wait "$pid" || true
pid=
sed -n '/^counters/,$p' "$log"
echo
echo "XDP programs left on the interfaces: $(ip link show | grep -c ' xdp' || true)"
echo "Per-packet answers without a live switch: sgswitch trace examples ... and sgswitch replay examples --pcap FILE."
echo "Service files: contrib/systemd/sgswitch.service, contrib/prometheus/prometheus.yml, contrib/grafana/sgswitch.json."
