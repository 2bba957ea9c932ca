//! `sgswitch diagnose`: both sides of a path, from a configuration
//! directory (and, through `ctl diagnose`, from the running switch).

use std::path::PathBuf;

use serde_json::Value;
use sgswitch::tools::diagnose::{Ask, diagnose};

use super::{CliError, describe, out};

/// The endpoints and the packet, for `diagnose` and `ctl diagnose`.
#[derive(Debug, clap::Args)]
pub(crate) struct PathFlags {
    /// The sender: a port id, or an IP address (a port's, or one outside
    /// the host, behind the uplink).
    #[arg(long)]
    from: String,
    /// The receiver: a port id or an IP address.
    #[arg(long)]
    to: String,
    /// tcp, udp, icmp, icmpv6, gre or a protocol number [default: the
    /// usual services, both ways: 22, 80, 443, 3389, 8080 and ICMP echo].
    #[arg(long)]
    proto: Option<String>,
    /// The destination port (tcp and udp).
    #[arg(long)]
    port: Option<u16>,
    /// The source port (tcp and udp) [default: 49152].
    #[arg(long)]
    source_port: Option<u16>,
    /// ICMP type (icmp, icmpv6) [default: echo request].
    #[arg(long)]
    icmp_type: Option<u8>,
    /// ICMP code [default: 0].
    #[arg(long)]
    icmp_code: Option<u8>,
    /// One JSON object per path.
    #[arg(long)]
    json: bool,
}

impl PathFlags {
    pub(crate) fn ask(&self) -> Ask {
        Ask {
            from: self.from.clone(),
            to: self.to.clone(),
            proto: self.proto.clone(),
            port: self.port,
            source_port: self.source_port,
            icmp_type: self.icmp_type,
            icmp_code: self.icmp_code,
        }
    }

    pub(crate) fn json(&self) -> bool {
        self.json
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct DiagnoseArgs {
    /// The configuration directory.
    dir: PathBuf,
    #[command(flatten)]
    path: PathFlags,
}

pub(crate) fn run(a: &DiagnoseArgs) -> Result<(), CliError> {
    let plan = super::replay::load_plan(&a.dir)?;
    let paths = diagnose(&plan, &a.path.ask()).map_err(CliError::Usage)?;
    out(&render(&paths, a.path.json))
}

/// The paths as JSON lines, or as a table: one row per path, with the
/// verdict, where it was decided, and each side's decision.
pub(crate) fn render(paths: &[Value], json: bool) -> String {
    if json {
        return paths.iter().map(|p| format!("{p}\n")).collect();
    }
    let end = |e: &Value| match e["port"].as_str() {
        Some(p) => format!("{p} ({})", s(&e["address"])),
        None => s(&e["address"]),
    };
    let mut rows = vec![["service", "from", "to", "verdict", "why"].map(String::from).to_vec()];
    for p in paths {
        let what = match (&p["service"], &p["port"]) {
            (Value::String(name), Value::Null) => format!("{name} ({})", s(&p["proto"])),
            (Value::String(name), port) => format!("{name} ({}/{port})", s(&p["proto"])),
            (_, Value::Null) => s(&p["proto"]),
            (_, port) => format!("{}/{port}", s(&p["proto"])),
        };
        let mut why = Vec::new();
        for side in ["egress", "ingress"] {
            let d = &p[side];
            if d.is_null() {
                continue;
            }
            let at = if side == "egress" { &p["from"]["port"] } else { &p["to"]["port"] };
            why.push(format!("{side} of {}: {} by {}", s(at), s(&d["verdict"]), decided_by(d)));
        }
        let dp = &p["datapath"];
        let reason = s(&dp["reason"]);
        // The datapath's word, where the rules of the two sides are not
        // the whole story.
        if !reason.starts_with("rule:") && !matches!(reason.as_str(), "default" | "intra-group") {
            why.push(format!("datapath: {} ({reason})", s(&dp["action"])));
        }
        rows.push(vec![what, end(&p["from"]), end(&p["to"]), s(&p["verdict"]).to_uppercase(), why.join("; ")]);
    }
    describe::table(&rows)
}

fn decided_by(d: &Value) -> String {
    match s(&d["by"]).as_str() {
        "rule" => {
            let r = &d["rule"];
            format!("rule {}/{}/{} (priority {})", s(&r["group"]), s(&r["direction"]), r["index"], r["priority"])
        }
        by => by.to_owned(),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}
