//! `sgswitch trace`: the decision for one first packet, or a batch of them.

use std::io::Read;
use std::path::{Path, PathBuf};

use sgswitch::tools::request::{Proto, Request, decision_value, resolve};
use sgswitch_filter::{Compiled, Decision, Packet, PortIdx};

use super::{CliError, describe, out};

#[derive(Debug, clap::Args)]
pub(crate) struct TraceArgs {
    /// The configuration directory.
    dir: PathBuf,
    #[command(flatten)]
    packet: PacketFlags,
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

/// One packet's flags, for `trace` and `ctl trace`.
#[derive(Debug, clap::Args)]
pub(crate) struct PacketFlags {
    /// The port (ENI) id.
    #[arg(long)]
    port: Option<String>,
    /// ingress (toward the VM) or egress (from the VM).
    #[arg(long, value_parser = ["ingress", "egress"])]
    direction: Option<String>,
    /// tcp, udp, icmp, icmpv6, gre or an IP protocol number.
    #[arg(long)]
    proto: Option<String>,
    /// The far side: the source for ingress, the destination for egress.
    #[arg(long)]
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
}

impl PacketFlags {
    /// The request these flags describe; `--port`, `--direction`, `--proto`
    /// and `--remote` are required.
    pub(crate) fn request(&self) -> Result<Request, CliError> {
        let missing: Vec<&str> = [
            ("--port", self.port.is_none()),
            ("--direction", self.direction.is_none()),
            ("--proto", self.proto.is_none()),
            ("--remote", self.remote.is_none()),
        ]
        .into_iter()
        .filter_map(|(f, m)| m.then_some(f))
        .collect();
        if !missing.is_empty() {
            return Err(CliError::Usage(format!("missing {}", missing.join(", "))));
        }
        Ok(Request {
            port: self.port.clone().unwrap_or_default(),
            direction: self.direction.clone().unwrap_or_default(),
            proto: Proto::Name(self.proto.clone().unwrap_or_default()),
            remote: self.remote.clone().unwrap_or_default(),
            remote_port: self.remote_port,
            local: self.local.clone(),
            local_port: self.local_port,
            icmp_type: self.icmp_type,
            icmp_code: self.icmp_code,
        })
    }
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
    let plan = super::replay::load_plan(&a.dir)?;
    let policy = plan.policy();
    let queries: Vec<(PortIdx, Packet)> = match &a.batch {
        None => {
            let req = a.packet.request()?;
            vec![resolve(policy, &req).map_err(CliError::Usage)?]
        }
        Some(path) => {
            let text = read_batch(path)?;
            let mut qs = Vec::new();
            let mut errors = Vec::new();
            // Blank lines are skipped; every other line is one request.
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let parsed = serde_json::from_str::<Request>(line).map_err(|e| e.to_string()).and_then(|r| resolve(policy, &r));
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

    let decisions = decide(&plan.compiled, &queries, a.reference, a.cross_check || cfg!(debug_assertions))?;
    let mut probe = sgswitch::tools::probe::pipeline(&plan);
    let datapath: Vec<Option<sgswitch::tools::probe::Datapath>> = queries
        .iter()
        .zip(&decisions)
        .map(|((port, pkt), d)| {
            let p = u16::try_from(*port).ok()?;
            sgswitch::tools::probe::datapath(&mut probe, &plan, p, pkt, d)
        })
        .collect();
    let text = if a.json {
        decisions
            .iter()
            .zip(&datapath)
            .map(|(d, dp)| {
                let mut v = decision_value(policy, d);
                if let Some(dp) = dp {
                    v["datapath"] = dp.json(&plan);
                }
                v.to_string() + "\n"
            })
            .collect::<String>()
    } else {
        let rows: Vec<Vec<String>> = queries
            .iter()
            .zip(&decisions)
            .zip(&datapath)
            .map(|(((port, pkt), d), dp)| {
                let mut why = describe::why(policy, *port, pkt, d);
                if let Some(dp) = dp {
                    why += &format!("; {}", dp.text(&plan));
                }
                vec![
                    policy.ports()[*port].id.clone(),
                    pkt.direction.as_str().to_string(),
                    describe::packet(pkt),
                    d.verdict.as_str().to_uppercase(),
                    why,
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
fn decide(compiled: &Compiled, queries: &[(PortIdx, Packet)], reference: bool, cross_check: bool) -> Result<Vec<Decision>, CliError> {
    let policy = compiled.policy();
    if reference {
        return Ok(queries.iter().map(|(port, pkt)| policy.evaluate(*port, pkt)).collect());
    }
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
