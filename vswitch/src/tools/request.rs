//! A trace request (one `sgswitch trace` query, one line of a batch, or the
//! body of `sgswitch ctl trace`) and its resolution against a policy.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sgswitch_config::{Direction, parse_protocol};
use sgswitch_filter::{Decision, Packet, Policy, PortIdx, Query};

/// A protocol given as a name or a number.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Proto {
    Name(String),
    Number(i64),
}

/// One request: the flags of a single trace, or one line of a batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub port: String,
    pub direction: String,
    pub proto: Proto,
    pub remote: String,
    pub remote_port: Option<i64>,
    pub local: Option<String>,
    pub local_port: Option<i64>,
    pub icmp_type: Option<i64>,
    pub icmp_code: Option<i64>,
}

#[derive(Debug, Serialize)]
struct JsonRule<'a> {
    group: &'a str,
    direction: &'a str,
    index: u16,
    /// The rule's `id`, where it has one (an extension of the contract's
    /// object).
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    priority: u8,
    action: &'a str,
}

/// The `--json` line of `interfaces.md`; field order is the contract's.
#[derive(Debug, Serialize)]
struct JsonDecision<'a> {
    verdict: &'a str,
    by: &'a str,
    rule: Option<JsonRule<'a>>,
}

fn in_range<T: TryFrom<i64>>(what: &str, v: Option<i64>, hi: i64) -> Result<Option<T>, String> {
    v.map(|n| T::try_from(n).ok().filter(|_| (0..=hi).contains(&n)).ok_or_else(|| format!("{what} {n} is out of range 0..{hi}")))
        .transpose()
}

/// Parses a request's strings and numbers, then resolves it against the policy.
pub fn resolve(policy: &Policy, r: &Request) -> Result<(PortIdx, Packet), String> {
    let direction = match r.direction.as_str() {
        "ingress" => Direction::Ingress,
        "egress" => Direction::Egress,
        d => return Err(format!("direction \"{d}\" is not ingress or egress")),
    };
    let proto = match &r.proto {
        Proto::Name(s) => match parse_protocol(s) {
            Some(Some(p)) => p,
            Some(None) => return Err("a packet has one protocol: \"all\" is for rules".into()),
            None => return Err(format!("protocol \"{s}\" is not tcp, udp, icmp, icmpv6, gre or a number 0..255")),
        },
        Proto::Number(n) => u8::try_from(*n).map_err(|_| format!("protocol {n} is out of range 0..255"))?,
    };
    let ip = |what: &str, s: &str| s.parse::<IpAddr>().map_err(|_| format!("{what} \"{s}\" is not an IP address"));
    let q = Query {
        port: r.port.clone(),
        direction,
        proto,
        remote: ip("remote", &r.remote)?,
        local: r.local.as_deref().map(|l| ip("local", l)).transpose()?,
        remote_port: in_range("remote_port", r.remote_port, 65535)?,
        local_port: in_range("local_port", r.local_port, 65535)?,
        icmp_type: in_range("icmp_type", r.icmp_type, 255)?,
        icmp_code: in_range("icmp_code", r.icmp_code, 255)?,
    };
    policy.resolve(&q)
}

/// The `--json` line of a decision.
pub fn json_line(policy: &Policy, d: &Decision) -> String {
    decision_value(policy, d).to_string()
}

/// A decision as the `--json` object (keys in the contract's order).
pub fn decision_value(policy: &Policy, d: &Decision) -> serde_json::Value {
    let rule = d.rule().map(|r| JsonRule {
        group: &policy.group(r.group).id,
        direction: r.direction.as_str(),
        index: r.index,
        id: policy.rule(r).id.as_deref(),
        priority: r.priority,
        action: r.action.as_str(),
    });
    let j = JsonDecision { verdict: d.verdict.as_str(), by: d.by.as_str(), rule };
    serde_json::to_value(&j).expect("a struct of strings and integers serialises")
}
