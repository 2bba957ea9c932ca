//! `sgswitch check`: load, validate, summarise.

use std::fmt::Write;
use std::path::Path;

use sgswitch_config::Direction;

use super::{CliError, describe, load_policy, out};

pub(crate) fn run(dir: &Path) -> Result<(), CliError> {
    let policy = load_policy(dir)?;
    let cfg = policy.config();
    let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let mut s = String::new();
    let _ = writeln!(s, "{}: valid, policy model \"{}\"", dir.display(), cfg.host.policy_model.as_str());
    let _ = writeln!(
        s,
        "{}, {}, {}\n",
        plural(cfg.ports.len(), "port", "ports"),
        plural(cfg.groups.len(), "security group", "security groups"),
        plural(cfg.prefix_lists.len(), "prefix list", "prefix lists"),
    );
    let limit = cfg.host.limits.rules_per_port;
    let mut rows = vec![vec!["PORT".into(), "GROUPS".into(), "INGRESS".into(), "EGRESS".into(), "QUOTA".into()]];
    for (i, p) in cfg.ports.iter().enumerate() {
        let groups = policy.port_groups(i);
        let count = |d: Direction| groups.iter().map(|&g| policy.group(g).rules(d).len()).sum::<usize>();
        let weight: u32 = groups.iter().map(|&g| cfg.group_weight(policy.group(g))).sum();
        let names: Vec<&str> = p.security_groups.iter().map(|r| r.id.as_str()).collect();
        rows.push(vec![
            p.id.clone(),
            names.join(","),
            count(Direction::Ingress).to_string(),
            count(Direction::Egress).to_string(),
            format!("{weight}/{limit}"),
        ]);
    }
    s.push_str(&describe::table(&rows));
    s.push_str("QUOTA: rules counted against rules_per_port; a prefix-list rule counts as its max_entries\n");
    // The connection tables `run` allocates, against this machine's memory.
    let loops = cfg.host.datapath.cores.len().max(1);
    let need = match sgswitch::control::sizing::meminfo("MemTotal") {
        Some(total) => sgswitch::control::sizing::check_conntrack_memory(&cfg.host, loops, total, "MemTotal").map_err(|e| {
            CliError::Config(sgswitch_config::ConfigErrors(vec![sgswitch_config::ConfigError {
                file: dir.join("host.toml"),
                line: 0,
                col: 0,
                msg: e.to_string(),
            }]))
        })?,
        None => sgswitch::control::sizing::conntrack_bytes(cfg.host.conntrack.capacity, loops),
    };
    let _ = writeln!(
        s,
        "connection tables: {} flows over {}, {:.1} MiB",
        cfg.host.conntrack.capacity,
        plural(loops, "poll loop", "poll loops"),
        need as f64 / f64::from(1u32 << 20)
    );
    let lints = sgswitch::tools::lint::lint(&policy).len();
    let _ = writeln!(
        s,
        "lint: {}{}",
        plural(lints, "finding", "findings"),
        if lints > 0 { format!("; `sgswitch lint {}` lists them", dir.display()) } else { String::new() }
    );
    if cfg.warnings.is_empty() {
        s.push_str("\nno findings\n");
    } else {
        let _ = writeln!(s, "\n{}:", plural(cfg.warnings.len(), "finding", "findings"));
        for w in &cfg.warnings {
            let _ = writeln!(s, "  warning: {w}");
        }
    }
    out(&s)
}
