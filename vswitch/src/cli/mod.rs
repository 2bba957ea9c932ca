//! Subcommands. Each returns `Result<(), CliError>`; `main` maps the error to
//! the exit status of the contract.

mod check;
mod ctl;
mod describe;
mod diagnose;
mod exchange;
mod fleet;
mod history;
mod lint;
mod replay;
mod trace;

use std::fmt;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use sgswitch_config::{ConfigErrors, load_dir};
use sgswitch_filter::Policy;

/// Whether the configuration made of `files` (path relative to the
/// directory, text) loads, tried in a scratch directory; its messages name
/// `shown_as` where the scratch directory was.
pub(crate) fn scratch_check(files: &[(String, String)], shown_as: &str) -> Result<(), String> {
    let trial = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    for (rel, text) in files {
        let at = trial.path().join(rel);
        std::fs::create_dir_all(at.parent().unwrap_or(trial.path())).map_err(|e| e.to_string())?;
        std::fs::write(&at, text).map_err(|e| e.to_string())?;
    }
    load_dir(trial.path()).map(|_| ()).map_err(|e| e.to_string().replace(&trial.path().display().to_string(), shown_as))
}

/// Writes `text` as `dir/rel` through a hidden temporary file renamed over
/// it, so a running switch never reads half of it.
pub(crate) fn write_atomically(dir: &std::path::Path, rel: &str, text: &str) -> Result<(), CliError> {
    let at = dir.join(rel);
    let folder = at.parent().unwrap_or(dir);
    std::fs::create_dir_all(folder).map_err(|e| CliError::Runtime(format!("{}: {e}", folder.display())))?;
    let name = at.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let tmp = folder.join(format!(".{name}.new"));
    std::fs::write(&tmp, text).map_err(|e| CliError::Runtime(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, &at).map_err(|e| CliError::Runtime(format!("{}: {e}", at.display())))
}

/// A failure that ends the command, with its exit status.
#[derive(Debug)]
pub(crate) enum CliError {
    /// Exit 1: the command line or its inputs are wrong.
    Usage(String),
    /// Exit 1: the configuration directory is invalid.
    Config(ConfigErrors),
    /// Exit 2: something failed at run time.
    Runtime(String),
}

impl CliError {
    pub(crate) fn code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Config(_) => 1,
            CliError::Runtime(_) => 2,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) => write!(f, "error: {m}"),
            CliError::Config(errs) => {
                writeln!(f, "{errs}")?;
                let n = errs.0.len();
                write!(f, "{n} error{}; the configuration was not loaded", if n == 1 { "" } else { "s" })
            }
            CliError::Runtime(m) => write!(f, "error: {m}"),
        }
    }
}

/// sgswitch: a userspace virtual switch that enforces cloud security groups.
#[derive(Debug, Parser)]
#[command(name = "sgswitch", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load, validate and compile a configuration directory; print a summary
    /// and findings. Exits 1 if the configuration is invalid.
    Check {
        /// The configuration directory (host.toml, ports/, groups/, prefix-lists/).
        dir: PathBuf,
    },
    /// The decision for one first packet (no connection state), or for each
    /// line of a batch file.
    Trace(Box<trace::TraceArgs>),
    /// Both sides of a path between two ports, or a port and an address
    /// outside the host: the sender's egress, the receiver's ingress, each
    /// with its deciding rule, and the datapath's verdict; without --proto,
    /// the usual services both ways.
    Diagnose(Box<diagnose::DiagnoseArgs>),
    /// Write a group's rules in a provider's format: Alibaba's
    /// DescribeSecurityGroupAttribute JSON, Tencent's
    /// DescribeSecurityGroupPolicies JSON, or the console's CSV.
    Export(exchange::ExportArgs),
    /// Make a group file of a provider's export (at most 200 rules; a
    /// priority over 100 leaves its rule out, with a warning); written only
    /// if the directory with it passes `check`.
    Import(exchange::ImportArgs),
    /// Copy a group under a new id.
    Clone(exchange::CloneArgs),
    /// The configurations `run` applied: list, diff, restore.
    History(history::HistoryArgs),
    /// What in a valid configuration is probably a mistake: rules that can
    /// never match a bound port, duplicate rules, limits used 80% or more.
    Lint(lint::LintArgs),
    /// Run the whole pipeline (parsing, anti-spoofing, conntrack,
    /// classification, forwarding) over a capture, with its timestamps as
    /// the clock; one line per packet.
    Replay(replay::ReplayArgs),
    /// The switch: AF_XDP poll loops on the ports' and the uplink's
    /// interfaces, hot reload on file change and SIGHUP; SIGINT or SIGTERM
    /// stops it and prints its counters.
    Run {
        /// The configuration directory.
        dir: PathBuf,
        /// Log lines as human-readable text or as one JSON object each.
        #[arg(long, value_parser = ["text", "json"], default_value = "text")]
        log_format: String,
        /// The control plane alone: load, reload, follow the store and
        /// answer `ctl`, but open no socket and move no frame (many hosts
        /// on one machine, for tests; a host that only answers `ctl trace`).
        #[arg(long)]
        no_datapath: bool,
    },
    /// Check a directory, then write its groups and prefix lists to the
    /// store that host.toml's [store] names, in one transaction guarded by
    /// the revision read: every host applies all of it or none.
    Push {
        /// The configuration directory (host.toml with [store], groups/, prefix-lists/).
        dir: PathBuf,
    },
    /// Write the store's groups and prefix lists into a directory (whose
    /// host.toml names the store), replacing the files there.
    Pull {
        /// The configuration directory (host.toml with [store]).
        dir: PathBuf,
    },
    /// Talk to the running switch through its control socket: status,
    /// reload, connection listing and flushing, and trace against the live
    /// policy and connection state.
    Ctl(ctl::CtlArgs),
}

pub(crate) fn run(cli: Cli) -> Result<(), CliError> {
    match cli.cmd {
        Command::Check { dir } => check::run(&dir),
        Command::Trace(args) => trace::run(&args),
        Command::Diagnose(args) => diagnose::run(&args),
        Command::Export(args) => exchange::export(&args),
        Command::Import(args) => exchange::import(&args),
        Command::Clone(args) => exchange::clone(&args),
        Command::History(args) => history::run(&args),
        Command::Lint(args) => lint::run(&args),
        Command::Replay(args) => replay::run(&args),
        Command::Run { dir, log_format, no_datapath } => {
            // A configuration error is a usage error (exit 1); anything
            // else that stops the switch is a runtime failure (exit 2).
            // With a store, the groups are not in the directory: its
            // host.toml is checked here, the rest once the store is read.
            if sgswitch_config::load_host(&dir).ok().and_then(|h| h.store).is_none() {
                load_dir(&dir).map_err(CliError::Config)?;
            }
            init_logging(&log_format);
            let opts = sgswitch::switch::RunOptions { datapath: !no_datapath };
            let summary = sgswitch::switch::run(&dir, opts).map_err(|e| CliError::Runtime(e.to_string()))?;
            eprint!("{summary}");
            Ok(())
        }
        Command::Push { dir } => fleet::push(&dir),
        Command::Pull { dir } => fleet::pull(&dir),
        Command::Ctl(args) => ctl::run(&args),
    }
}

/// The switch's log on stderr: text for people (no colours unless stderr
/// is a terminal), or one JSON object per line for log collectors.
fn init_logging(format: &str) {
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false);
    let _ = if format == "json" {
        b.json().with_current_span(false).try_init()
    } else {
        b.with_ansi(std::io::stderr().is_terminal()).try_init()
    };
}

/// Loads a configuration directory for the offline verbs (`check`,
/// `lint`, `trace`, `diagnose`, `replay`). A host's directory under a
/// store (`[store]` in host.toml, no `groups/` of its own) is loaded with
/// the store's groups, prefix lists and other hosts' ports, as `run` would
/// load it; a directory with `groups/` (the one pushed from) is read alone.
pub(crate) fn load_config(dir: &std::path::Path) -> Result<sgswitch_config::Config, CliError> {
    // A host.toml that does not load: the whole directory is loaded, so
    // that every file's errors are reported in one pass.
    let store = sgswitch_config::load_host(dir).ok().and_then(|h| h.store);
    match store {
        Some(s) if !dir.join("groups").exists() => {
            let snap = sgswitch::control::store::block_on(sgswitch::control::store::pull(&s))
                .map_err(CliError::Runtime)?
                .map_err(|e| CliError::Runtime(format!("{}: [store] names etcd, which cannot be read: {e}", dir.display())))?;
            sgswitch_config::load_dir_with(dir, Some(&snap.overlay(&s.host))).map_err(CliError::Config)
        }
        _ => load_dir(dir).map_err(CliError::Config),
    }
}

/// Loads and resolves a configuration directory ([`load_config`]).
fn load_policy(dir: &std::path::Path) -> Result<Policy, CliError> {
    load_config(dir).map(Policy::new)
}

/// Writes to stdout; a closed or failing stdout is a runtime failure.
fn out(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).map_err(|e| CliError::Runtime(format!("writing output: {e}")))
}
