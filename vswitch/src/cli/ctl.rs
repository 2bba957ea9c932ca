//! `sgswitch ctl`: the running switch, through its control socket.
//!
//! Exit status: 0 on success, 1 when the switch refuses the request (an
//! unknown port, a configuration a reload refused), 2 when the switch
//! cannot be reached.

use std::path::PathBuf;

use serde_json::Value;
use sgswitch::ops::control::{CallError, CtlRequest, call};

use super::diagnose::PathFlags;
use super::trace::PacketFlags;
use super::{CliError, describe, out};

#[derive(Debug, clap::Args)]
pub(crate) struct CtlArgs {
    /// The control socket (`[control] socket` in host.toml).
    #[arg(long, default_value = "/run/sgswitch/control.sock")]
    socket: PathBuf,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// Ports, poll loops, XDP modes, the configuration generation.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Load the configuration directory again (as SIGHUP does) and say
    /// whether it was applied.
    Reload,
    /// Connection tracking: list or flush flows.
    Conntrack {
        #[command(subcommand)]
        verb: ConntrackVerb,
    },
    /// The decision for a packet against the live policy and the live
    /// connection state (a tracked flow passes as established).
    Trace {
        #[command(flatten)]
        packet: PacketFlags,
        #[arg(long)]
        json: bool,
    },
    /// Both sides of a path against the live policy, as `sgswitch
    /// diagnose`.
    Diagnose {
        #[command(flatten)]
        path: PathFlags,
    },
}

#[derive(Debug, clap::Subcommand)]
enum ConntrackVerb {
    /// The tracked flows, of one port or all.
    List {
        #[arg(long)]
        port: Option<String>,
        /// Most flows to list.
        #[arg(long, default_value_t = sgswitch::ops::control::DEFAULT_LIMIT)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Remove the tracked flows of one port, or all.
    Flush {
        #[arg(long)]
        port: Option<String>,
    },
}

fn ask(a: &CtlArgs, req: &CtlRequest) -> Result<Value, CliError> {
    call(&a.socket, req).map_err(|e| match e {
        CallError::Unreachable(m) => CliError::Runtime(m),
        CallError::Refused(m) => CliError::Usage(m),
    })
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

pub(crate) fn run(a: &CtlArgs) -> Result<(), CliError> {
    match &a.verb {
        Verb::Status { json } => {
            let v = ask(a, &CtlRequest::Status)?;
            if *json {
                return out(&format!("{v}\n"));
            }
            let mut text = format!(
                "config {} generation {} (loaded {}; reloads: {} applied, {} refused), up {} s, metrics on {}\n",
                s(&v["config"]),
                v["generation"],
                s(&v["loaded_at"]),
                v["reloads"]["success"],
                v["reloads"]["failure"],
                v["uptime_seconds"],
                s(&v["metrics"])
            );
            for n in v["needs_restart"].as_array().into_iter().flatten() {
                text += &format!("not applied until a restart: {}\n", s(n));
            }
            let st = &v["store"];
            if st.is_object() {
                let state = if st["connected"].as_bool() == Some(true) {
                    format!("connected since {}", s(&st["since"]))
                } else {
                    format!("UNREACHABLE since {} ({}); enforcing revision {}", s(&st["since"]), s(&st["error"]), st["revision_in_force"])
                };
                text += &format!(
                    "store etcd {} prefix {} as host {}: {state}; revision {} read, {} in force; {} ports published, {} of other hosts\n",
                    st["endpoints"].as_array().into_iter().flatten().map(s).collect::<Vec<_>>().join(","),
                    s(&st["prefix"]),
                    s(&st["host"]),
                    st["revision_seen"],
                    st["revision_in_force"],
                    st["published_ports"],
                    st["remote_ports"]
                );
                if st["refused"].is_object() {
                    text += &format!(
                        "store revision {} REFUSED (the one before stays):\n{}\n",
                        st["refused"]["revision"],
                        s(&st["refused"]["why"])
                    );
                }
                for k in st["conflicts"].as_array().into_iter().flatten() {
                    let claims: Vec<String> = k["claims"].as_array().into_iter().flatten().map(s).collect();
                    text += &format!(
                        "address conflict: {} claimed by {} (no group's member until resolved)\n",
                        s(&k["address"]),
                        claims.join(", ")
                    );
                }
            }
            if v["datapath"].as_bool() == Some(false) {
                text += "no datapath (run --no-datapath): no port is attached\n";
            }
            let up = &v["uplink"];
            if !matches!(s(&up["link"]).as_str(), "up" | "off") {
                text += &format!("uplink {} DOWN: {}\n", s(&up["interface"]), s(&up["reason"]));
            }
            for l in v["loops"].as_array().into_iter().flatten() {
                text += &format!(
                    "loop {} on core {}: {} batches, {} busy / {} idle iterations\n",
                    l["index"], l["core"], l["batches"], l["busy"], l["idle"]
                );
                for so in l["sockets"].as_array().into_iter().flatten() {
                    let zc = if so["zero_copy"].as_bool() == Some(true) { "zero-copy" } else { "copy" };
                    text += &format!("  {} queue {}: {} {zc}\n", s(&so["interface"]), so["queue"], s(&so["mode"]));
                }
            }
            let rows: Vec<Vec<String>> = v["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let link = match s(&p["link"]).as_str() {
                        "up" => "up".to_owned(),
                        "off" => "not attached".to_owned(),
                        _ => format!("DOWN: {}", s(&p["reason"])),
                    };
                    vec![s(&p["id"]), s(&p["interface"]), format!("{} flows", p["flows"]), link]
                })
                .collect();
            text += &describe::table(&rows);
            out(&text)
        }
        Verb::Reload => {
            let v = ask(a, &CtlRequest::Reload)?;
            let mut text = format!("reloaded: generation {}\n", v["generation"]);
            for n in v["needs_restart"].as_array().into_iter().flatten() {
                text += &format!("not applied until a restart: {}\n", s(n));
            }
            out(&text)
        }
        Verb::Conntrack { verb: ConntrackVerb::List { port, limit, json } } => {
            let v = ask(a, &CtlRequest::ConntrackList { port: port.clone(), limit: Some(*limit) })?;
            let flows = v["flows"].as_array().cloned().unwrap_or_default();
            if *json {
                return out(&flows.iter().map(|f| format!("{f}\n")).collect::<String>());
            }
            let rows: Vec<Vec<String>> = flows
                .iter()
                .map(|f| {
                    vec![
                        s(&f["port"]),
                        s(&f["proto"]),
                        format!("{}:{}", s(&f["src"]), f["sport"]),
                        format!("{}:{}", s(&f["dst"]), f["dport"]),
                        s(&f["state"]),
                        format!("{}/{} pkts", f["packets"][0], f["packets"][1]),
                    ]
                })
                .collect();
            let mut text = describe::table(&rows);
            let total = v["total"].as_u64().unwrap_or(0);
            if total > flows.len() as u64 {
                text += &format!("({} of {total} flows shown; --limit shows more)\n", flows.len());
            }
            out(&text)
        }
        Verb::Conntrack { verb: ConntrackVerb::Flush { port } } => {
            let v = ask(a, &CtlRequest::ConntrackFlush { port: port.clone() })?;
            out(&format!("flushed {} flows\n", v["flushed"]))
        }
        Verb::Diagnose { path } => {
            let v = ask(a, &CtlRequest::Diagnose { ask: path.ask() })?;
            let paths = v["paths"].as_array().cloned().unwrap_or_default();
            out(&super::diagnose::render(&paths, path.json()))
        }
        Verb::Trace { packet, json } => {
            let v = ask(a, &CtlRequest::Trace { request: packet.request()? })?;
            if *json {
                return out(&format!("{v}\n"));
            }
            let verdict = s(&v["verdict"]).to_uppercase();
            let why = match (s(&v["by"]).as_str(), &v["rule"]) {
                ("rule", r) => format!("rule {}/{}/{}", s(&r["group"]), s(&r["direction"]), r["index"]),
                (by, _) => by.to_owned(),
            };
            let ct = match &v["conntrack"] {
                Value::Null => "no tracked flow".to_owned(),
                c => format!("tracked flow {}, {}/{} packets", s(&c["state"]), c["packets"][0], c["packets"][1]),
            };
            let p = &v["policy"];
            let mut text = format!("{verdict} by {why} ({ct}; the rules say {} by {})\n", s(&p["verdict"]), s(&p["by"]));
            let d = &v["datapath"];
            if !d.is_null() {
                let at = if d["port"].is_null() { String::new() } else { format!(" at {} {}", s(&d["port"]), s(&d["direction"])) };
                text += &format!("datapath: {}{at} ({})\n", s(&d["action"]), s(&d["reason"]));
            }
            out(&text)
        }
    }
}
