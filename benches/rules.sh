# The benchmarks' rule sets, one source for benches/e2e.sh and
# benches/vhost.sh (sourced): N ingress rules of which only the last allows
# the measured traffic, as a security group and as the equivalent OpenFlow
# pipeline with conntrack.

# sg-bench with `rules` rules: UDP to 1001.. from 203.0.113.0/24 (never
# the traffic), then UDP to `dport` from `source`.
bench_group() { # rules source dport
  local rules=$1 source=$2 dport=$3
  echo 'id = "sg-bench"'
  for i in $(seq 1 $((rules - 1))); do
    printf '[[ingress]]\nprotocol = "udp"\nports = "%d/%d"\nsource = "203.0.113.0/24"\n' $((1000 + i)) $((1000 + i))
  done
  printf '[[ingress]]\nprotocol = "udp"\nports = "%d/%d"\nsource = "%s"\n' "$dport" "$dport" "$source"
}

# The same rules as OpenFlow: table 0 sends IP from `in` through conntrack;
# table 1 passes committed flows (one-way UDP is never +est in OVS) and
# commits new ones a rule allows, by priority in rule order, out of `out`.
bench_flows() { # rules in out source dport
  local rules=$1 in=$2 out=$3 source=$4 dport=$5
  echo "table=0,priority=10,ip,in_port=$in,actions=ct(zone=1,table=1)"
  echo "table=0,priority=0,actions=drop"
  echo "table=1,priority=65000,ct_state=+trk-new,actions=output:$out"
  for i in $(seq 1 $((rules - 1))); do
    echo "table=1,priority=$((60000 - i)),ct_state=+trk+new,udp,nw_src=203.0.113.0/24,tp_dst=$((1000 + i)),actions=ct(commit,zone=1),output:$out"
  done
  echo "table=1,priority=$((60000 - rules)),ct_state=+trk+new,udp,nw_src=$source,tp_dst=$dport,actions=ct(commit,zone=1),output:$out"
  echo "table=1,priority=0,actions=drop"
}
