//! `sgswitch trace`: the decision for one first packet, or a batch of them.

use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sgswitch_config::{Direction, parse_protocol};
use sgswitch_filter::{Compiled, Decision, Packet, Policy, PortIdx, Query};

use super::{CliError, describe, load_policy, out};

#[derive(Debug, clap::Args)]
pub(crate) struct TraceArgs {
    /// The configuration directory.
    dir: PathBuf,
    /// The port (ENI) id.
    #[arg(long, required_unless_present = "batch")]
    port: Option<String>,
    /// ingress (toward the VM) or egress (from the VM).
    #[arg(long, required_unless_present = "batch", value_parser = ["ingress", "egress"])]
    direction: Option<String>,
    /// tcp, udp, icmp, icmpv6, gre or an IP protocol number.
    #[arg(long, required_unless_present = "batch")]
    proto: Option<String>,
    /// The far side: the source for ingress, the destination for egress.
    #[arg(long, required_unless_present = "batch")]
    remote: Option<String>,
    /// The far side's port (the destination port for egress).
    #[arg(long)]
    remote_port: Option<i64>,
    /// The port's own address [default: its first address of the remote's family].
    #[arg(long)]
    local: Option<String>,
    /// The VM's own port (the destination port for ingress).
    #[arg(long)]
    local_port: Option<i64>,
    /// ICMP type [default: echo request, 8 for icmp, 128 for icmpv6].
    #[arg(long)]
    icmp_type: Option<i64>,
    /// ICMP code [default: 0].
    #[arg(long)]
    icmp_code: Option<i64>,
    /// A file with one JSON request per line (keys port, direction, proto,
    /// remote, remote_port, local, local_port, icmp_type, icmp_code); "-" reads
    /// standard input.
    #[arg(long, conflicts_with_all = ["port", "direction", "proto", "remote", "remote_port", "local", "local_port", "icmp_type", "icmp_code"])]
    batch: Option<PathBuf>,
    /// One JSON object per decision.
    #[arg(long)]
    json: bool,
    /// Decide with the reference evaluator instead of the compiled tables
    /// the datapath uses.
    #[arg(long, conflicts_with = "cross_check")]
    reference: bool,
    /// Decide with both and fail (exit 2) if they disagree. Always on in
    /// debug builds.
    #[arg(long)]
    cross_check: bool,
}

/// A protocol given as a name or a number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Proto {
    Name(String),
    Number(i64),
}

/// One request: the flags of a single trace, or one line of a batch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    port: String,
    direction: String,
    proto: Proto,
    remote: String,
    remote_port: Option<i64>,
    local: Option<String>,
    local_port: Option<i64>,
    icmp_type: Option<i64>,
    icmp_code: Option<i64>,
}

#[derive(Debug, Serialize)]
struct JsonRule<'a> {
    group: &'a str,
    direction: &'a str,
    index: u16,
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
fn resolve(policy: &Policy, r: &Request) -> Result<(PortIdx, Packet), String> {
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

fn json_line(policy: &Policy, d: &Decision) -> String {
    let rule = d.rule().map(|r| JsonRule {
        group: &policy.group(r.group).id,
        direction: r.direction.as_str(),
        index: r.index,
        priority: r.priority,
        action: r.action.as_str(),
    });
    let j = JsonDecision { verdict: d.verdict.as_str(), by: d.by.as_str(), rule };
    serde_json::to_string(&j).expect("a struct of strings and integers serialises")
}

fn read_batch(path: &Path) -> Result<String, CliError> {
    let mut text = String::new();
    let res = if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|t| text = t)
    };
    res.map_err(|e| CliError::Usage(format!("{}: cannot read: {e}", path.display())))?;
    Ok(text)
}

pub(crate) fn run(a: &TraceArgs) -> Result<(), CliError> {
    let policy = load_policy(&a.dir)?;
    let queries: Vec<(PortIdx, Packet)> = match &a.batch {
        None => {
            let req = Request {
                port: a.port.clone().unwrap_or_default(),
                direction: a.direction.clone().unwrap_or_default(),
                proto: Proto::Name(a.proto.clone().unwrap_or_default()),
                remote: a.remote.clone().unwrap_or_default(),
                remote_port: a.remote_port,
                local: a.local.clone(),
                local_port: a.local_port,
                icmp_type: a.icmp_type,
                icmp_code: a.icmp_code,
            };
            vec![resolve(&policy, &req).map_err(CliError::Usage)?]
        }
        Some(path) => {
            let text = read_batch(path)?;
            let mut qs = Vec::new();
            let mut errors = Vec::new();
            // Blank lines are skipped; every other line is one request.
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let parsed = serde_json::from_str::<Request>(line).map_err(|e| e.to_string()).and_then(|r| resolve(&policy, &r));
                match parsed {
                    Ok(q) => qs.push(q),
                    Err(e) => errors.push(format!("{}:{}: {e}", path.display(), i + 1)),
                }
            }
            if !errors.is_empty() {
                return Err(CliError::Usage(errors.join("\nerror: ")));
            }
            qs
        }
    };

    let decisions = decide(&policy, &queries, a.reference, a.cross_check || cfg!(debug_assertions))?;
    let text = if a.json {
        decisions.iter().map(|d| json_line(&policy, d) + "\n").collect::<String>()
    } else {
        let rows: Vec<Vec<String>> = queries
            .iter()
            .zip(&decisions)
            .map(|((port, pkt), d)| {
                vec![
                    policy.ports()[*port].id.clone(),
                    pkt.direction.as_str().to_string(),
                    describe::packet(pkt),
                    d.verdict.as_str().to_uppercase(),
                    describe::why(&policy, *port, pkt, d),
                ]
            })
            .collect();
        describe::table(&rows)
    };
    out(&text)
}

/// The decisions for `queries`: from the compiled tables (the datapath's
/// code) unless `reference`; with `cross_check`, from both, and a
/// disagreement is an error that names the packet.
fn decide(policy: &Policy, queries: &[(PortIdx, Packet)], reference: bool, cross_check: bool) -> Result<Vec<Decision>, CliError> {
    if reference {
        return Ok(queries.iter().map(|(port, pkt)| policy.evaluate(*port, pkt)).collect());
    }
    let compiled = Compiled::new(std::sync::Arc::new(policy.clone()), 0);
    let mut out = Vec::with_capacity(queries.len());
    for (port, pkt) in queries {
        let d = compiled.decide(*port, pkt);
        if cross_check {
            let r = policy.evaluate(*port, pkt);
            if r != d {
                return Err(CliError::Runtime(format!(
                    "compiled classifier and reference evaluator disagree on port {} {}: compiled {}, reference {}",
                    policy.ports()[*port].id,
                    describe::packet(pkt),
                    describe::why(policy, *port, pkt, &d),
                    describe::why(policy, *port, pkt, &r)
                )));
            }
        }
        out.push(d);
    }
    Ok(out)
}
