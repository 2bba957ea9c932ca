//! `sgswitch replay`: the whole pipeline over a capture.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use sgswitch::pipeline::{Action, REASONS};
use sgswitch::plan::Plan;
use sgswitch::replay::{self, Captured};
use sgswitch_config::{Config, load_dir};

use super::{CliError, describe, out};

#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    /// The configuration directory.
    dir: PathBuf,
    /// The capture to replay (pcap or pcapng, Ethernet).
    #[arg(long)]
    pcap: PathBuf,
    /// Write the frames the switch forwards to this pcap file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// One JSON object per packet.
    #[arg(long)]
    json: bool,
}

/// The plan of a configuration directory, zones numbered from 0.
pub(crate) fn load_plan(dir: &Path) -> Result<Plan, CliError> {
    let cfg: Config = load_dir(dir).map_err(CliError::Config)?;
    Plan::build(cfg, &mut sgswitch::plan::Zones::default(), 1).map(|(plan, _)| plan).map_err(CliError::Usage)
}

pub(crate) fn run(args: &ReplayArgs) -> Result<(), CliError> {
    let plan = load_plan(&args.dir)?;
    let frames = replay::read_capture(&args.pcap).map_err(CliError::Usage)?;
    let outcomes = replay::run(&plan, &frames, 0x5eed);
    let mut s = String::new();
    if args.json {
        for (i, o) in outcomes.iter().enumerate() {
            let _ = writeln!(s, "{}", replay::json_line(&plan, i, o));
        }
    } else {
        let mut rows = vec![vec!["#".into(), "ACTION".into(), "TO".into(), "PORT".into(), "REASON".into()]];
        let mut by_reason = [[0usize; REASONS.len()]; 2];
        for (i, o) in outcomes.iter().enumerate() {
            let fwd = matches!(o.action, Action::Forward(_));
            by_reason[usize::from(fwd)][o.reason.kind()] += 1;
            let port = o.port.and_then(|p| plan.port(p)).map_or("-".to_owned(), |p| format!("{} {}", p.id, o.direction.as_str()));
            rows.push(vec![
                i.to_string(),
                if fwd { "forward" } else { "drop" }.into(),
                replay::to_text(&plan, o).unwrap_or_else(|| "-".into()),
                port,
                replay::reason_text(plan.policy(), o.reason),
            ]);
        }
        s.push_str(&describe::table(&rows));
        let fwd: usize = by_reason[1].iter().sum();
        let _ = writeln!(s, "\n{} packets: {fwd} forwarded, {} dropped", outcomes.len(), outcomes.len() - fwd);
        for (label, counts) in [("forwarded", by_reason[1]), ("dropped", by_reason[0])] {
            let parts: Vec<String> = REASONS.iter().zip(counts).filter(|(_, n)| *n > 0).map(|(r, n)| format!("{r} {n}")).collect();
            if !parts.is_empty() {
                let _ = writeln!(s, "  {label}: {}", parts.join(", "));
            }
        }
    }
    if let Some(path) = &args.out {
        let kept: Vec<Captured> =
            frames.iter().zip(&outcomes).filter(|(_, o)| matches!(o.action, Action::Forward(_))).map(|(f, _)| f.clone()).collect();
        replay::write_capture(path, &kept).map_err(CliError::Runtime)?;
    }
    out(&s)
}
