#!/usr/bin/env bash
# The demo: builds sgswitch, validates examples/ and asks it what the security
# groups decide for traffic an operator cares about, allowed and dropped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --quiet --locked -p sgswitch
sg=target/debug/sgswitch

step() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }

step "Validate the example host (web, db, bastion, isolated lab)" $sg check examples
step "SSH to the bastion from the office prefix list: allowed" \
  $sg trace examples --port eni-bastion --direction ingress --proto tcp --remote 198.51.100.7 --remote-port 40000 --local-port 22
step "SSH to the bastion from anywhere else: dropped" \
  $sg trace examples --port eni-bastion --direction ingress --proto tcp --remote 192.0.2.50 --remote-port 40000 --local-port 22
step "SSH to a web server from the bastion (group reference): allowed" \
  $sg trace examples --port eni-web1 --direction ingress --proto tcp --remote 10.0.2.31 --remote-port 40000 --local-port 22
step "Plain http from the blocked network: dropped (deny before allow at equal priority)" \
  $sg trace examples --port eni-web1 --direction ingress --proto tcp --remote 203.0.113.9 --remote-port 40000 --local-port 80
batch=$(mktemp)
trap 'rm -f "$batch"' EXIT
cat >"$batch" <<'JSON'
{"port":"eni-web1","direction":"ingress","proto":"tcp","remote":"2001:db8:7::1","remote_port":50000,"local_port":443}
{"port":"eni-web1","direction":"ingress","proto":"icmp","remote":"192.0.2.50"}
{"port":"eni-web2","direction":"ingress","proto":"tcp","remote":"10.0.0.11","remote_port":50000,"local_port":8000}
{"port":"eni-db1","direction":"ingress","proto":"tcp","remote":"10.0.0.11","remote_port":50000,"local_port":5432}
{"port":"eni-db1","direction":"ingress","proto":"tcp","remote":"10.0.2.31","remote_port":50000,"local_port":5432}
{"port":"eni-db1","direction":"egress","proto":"tcp","remote":"192.0.2.80","local_port":50000,"remote_port":443}
{"port":"eni-lab2","direction":"ingress","proto":"tcp","remote":"10.0.3.41","remote_port":50000,"local_port":8080}
{"port":"eni-lab2","direction":"ingress","proto":"tcp","remote":"198.51.100.7","remote_port":50000,"local_port":8080}
JSON
step "A batch: IPv6 https, ping, web-to-web (intra-group), postgres from web and from elsewhere, db egress, isolated lab" \
  $sg trace examples --batch "$batch"
step "The same batch as JSON, for scripts" $sg trace examples --batch "$batch" --json
printf '\nThe live switch (AF_XDP datapath, /metrics on 127.0.0.1:9469) is not built yet; see the open issues.\n'
