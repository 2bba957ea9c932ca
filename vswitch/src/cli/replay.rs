//! `sgswitch replay`: the whole pipeline over a capture.

use std::io::Write;
use std::path::{Path, PathBuf};

use sgswitch::datapath::plan::Plan;
use sgswitch::datapath::{Action, Kind, Outcome};
use sgswitch::port::capture::Reader;
use sgswitch::tools::replay::{self, Out, ReplayError};
use sgswitch_config::Config;

use super::CliError;

#[derive(Debug, clap::Args)]
#[command(after_help = "In a pcapng capture, each packet's interface (its interface description's name: a port's \
`interface`, or the uplink's) is where the frame came in, and every check runs as in `run`, the source MAC check \
included. In a plain pcap capture, and for pcapng interfaces without a name, a frame is egress of the port whose \
MAC is its source MAC, else uplink traffic. A capture cut short inside its last record replays every record before \
it, with a warning naming the byte offset.")]
pub(crate) struct ReplayArgs {
    /// The configuration directory.
    dir: PathBuf,
    /// The capture to replay (pcap or pcapng, Ethernet).
    #[arg(long)]
    pcap: PathBuf,
    /// Write the frames the switch forwards to this pcap file, in the
    /// order it sends them.
    #[arg(long)]
    out: Option<PathBuf>,
    /// One JSON object per packet.
    #[arg(long)]
    json: bool,
}

/// The plan of a configuration directory, zones numbered from 0.
pub(crate) fn load_plan(dir: &Path) -> Result<Plan, CliError> {
    let cfg: Config = super::load_config(dir)?;
    Plan::build(cfg, &mut sgswitch::datapath::plan::Zones::default(), 1).map(|(plan, _)| plan).map_err(|e| CliError::Usage(e.to_string()))
}

pub(crate) fn run(args: &ReplayArgs) -> Result<(), CliError> {
    let plan = load_plan(&args.dir)?;
    let mut reader = Reader::open(&args.pcap).map_err(|e| CliError::Usage(e.to_string()))?;
    let mut output = match &args.out {
        Some(p) => Some(Out::create(p).map_err(|e| CliError::Runtime(format!("{}: {e}", p.display())))?),
        None => None,
    };
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    let mut by_reason = [[0usize; Kind::COUNT]; 2];
    if !args.json {
        writeln!(w, "{:<8} {:<8} {:<16} {:<24} REASON", "#", "ACTION", "TO", "PORT").map_err(write_err)?;
    }
    let line = |i: usize, o: &Outcome| -> std::io::Result<()> {
        let fwd = matches!(o.action, Action::Forward(_));
        by_reason[usize::from(fwd)][o.reason.kind().index()] += 1;
        if args.json {
            return writeln!(w, "{}", replay::json_line(&plan, i, o));
        }
        let port = o.port.and_then(|p| plan.port(p)).map_or("-".to_owned(), |p| format!("{} {}", p.id, o.direction.as_str()));
        let to = replay::to_text(&plan, o).unwrap_or_else(|| "-".into());
        let line = format!(
            "{i:<8} {:<8} {to:<16} {port:<24} {}",
            if fwd { "forward" } else { "drop" },
            replay::reason_text(plan.policy(), o.reason)
        );
        writeln!(w, "{}", line.trim_end())
    };
    let forwarded = |ts: std::time::Duration, data: &[u8]| -> std::io::Result<()> {
        match output.as_mut() {
            Some(o) => o.write(ts, data),
            None => Ok(()),
        }
    };
    let result = replay::replay(&plan, &mut reader, &args.pcap, 0x5eed, line, forwarded);
    let summary = match result {
        Ok(s) => s,
        Err(ReplayError::Output(e)) => return Err(write_err(e)),
        Err(e) => return Err(CliError::Usage(e.to_string())),
    };
    if !args.json {
        let total = summary.packets;
        let fwd: usize = by_reason[1].iter().sum();
        writeln!(w, "\n{total} packets: {fwd} forwarded, {} dropped", total - fwd).map_err(write_err)?;
        for (label, counts) in [("forwarded", by_reason[1]), ("dropped", by_reason[0])] {
            let parts: Vec<String> =
                Kind::ALL.iter().zip(counts).filter(|(_, n)| *n > 0).map(|(k, n)| format!("{} {n}", k.label())).collect();
            if !parts.is_empty() {
                writeln!(w, "  {label}: {}", parts.join(", ")).map_err(write_err)?;
            }
        }
    }
    w.flush().map_err(write_err)?;
    if let Some(o) = output {
        o.finish().map_err(|e| CliError::Runtime(format!("writing the output capture: {e}")))?;
    }
    if let Some(t) = summary.truncated {
        eprintln!("warning: {t}");
    }
    Ok(())
}

fn write_err(e: std::io::Error) -> CliError {
    CliError::Runtime(format!("writing output: {e}"))
}
