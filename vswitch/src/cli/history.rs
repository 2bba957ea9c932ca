//! `sgswitch history`: the configurations `run` applied (`[history]`),
//! listed, compared and restored. Works on a broken directory too (that is
//! when a restore is wanted): only host.toml's `[history]` is read.

use std::path::{Path, PathBuf};

use sgswitch::control::history::{self, Files, Store};
use sgswitch_config::History;

use super::{CliError, describe, out};

#[derive(Debug, clap::Args)]
pub(crate) struct HistoryArgs {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// The records of a configuration directory, oldest first.
    List {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
        /// The database, instead of host.toml's `[history] path`.
        #[arg(long)]
        db: Option<PathBuf>,
    },
    /// What changed from record FROM to record TO (default: the files in
    /// the directory now), as a unified diff.
    Diff {
        dir: PathBuf,
        from: i64,
        to: Option<i64>,
        #[arg(long)]
        db: Option<PathBuf>,
    },
    /// Writes record ID's files back into the directory (and removes
    /// configuration files it did not have), once the directory with them
    /// passes `check`; a running switch reloads them as any change.
    Restore {
        dir: PathBuf,
        id: i64,
        #[arg(long)]
        db: Option<PathBuf>,
    },
}

/// The database of `dir`: `--db`, or host.toml's `[history] path`, or the
/// default.
fn store(dir: &Path, db: Option<&Path>) -> Result<Store, CliError> {
    let path = match db {
        Some(p) => p.to_path_buf(),
        None => {
            let text = std::fs::read_to_string(dir.join("host.toml")).unwrap_or_default();
            let table: toml::Table = toml::from_str(&text).unwrap_or_default();
            table
                .get("history")
                .and_then(|h| h.get("path"))
                .and_then(toml::Value::as_str)
                .map_or_else(|| History::default().path, PathBuf::from)
        }
    };
    if !path.exists() {
        return Err(CliError::Usage(format!("no history at {} (has `sgswitch run` applied this directory?)", path.display())));
    }
    Store::open(&path, dir).map_err(CliError::Runtime)
}

fn when(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(crate) fn run(a: &HistoryArgs) -> Result<(), CliError> {
    match &a.verb {
        Verb::List { dir, json, db } => {
            let records = store(dir, db.as_deref())?.list().map_err(CliError::Runtime)?;
            if *json {
                return out(&records.iter().map(|r| serde_json::to_string(r).unwrap_or_default() + "\n").collect::<String>());
            }
            let mut rows = vec![["record", "first applied", "last applied", "generation", "files"].map(String::from).to_vec()];
            rows.extend(
                records
                    .iter()
                    .map(|r| vec![r.id.to_string(), when(r.first_ms), when(r.last_ms), r.generation.to_string(), r.files.to_string()]),
            );
            out(&describe::table(&rows))
        }
        Verb::Diff { dir, from, to, db } => {
            let s = store(dir, db.as_deref())?;
            let a = s.files_of(*from).map_err(CliError::Usage)?;
            let (b, b_name): (Files, String) = match to {
                Some(t) => (s.files_of(*t).map_err(CliError::Usage)?, format!("record-{t}")),
                None => (history::current_files(dir).map_err(CliError::Runtime)?, "now".to_owned()),
            };
            out(&history::diff(&a, &b, &format!("record-{from}"), &b_name))
        }
        Verb::Restore { dir, id, db } => {
            let files = store(dir, db.as_deref())?.files_of(*id).map_err(CliError::Usage)?;
            restore(dir, *id, &files)
        }
    }
}

/// Makes the configuration files of `dir` exactly `files`: checked in a
/// scratch directory first, then each file written (renamed into place)
/// and the ones the record did not have removed.
fn restore(dir: &Path, id: i64, files: &Files) -> Result<(), CliError> {
    super::scratch_check(files, &format!("record {id}"))
        .map_err(|msg| CliError::Usage(format!("record {id} does not load as it is now (nothing was written):\n{msg}")))?;
    let now = history::current_files(dir).map_err(CliError::Runtime)?;
    let mut changed = 0;
    for (p, t) in files.iter().filter(|f| !now.contains(f)) {
        super::write_atomically(dir, p, t)?;
        changed += 1;
    }
    for (p, _) in now.iter().filter(|(p, _)| !files.iter().any(|(q, _)| q == p)) {
        std::fs::remove_file(dir.join(p)).map_err(|e| CliError::Runtime(format!("{}: {e}", dir.join(p).display())))?;
        changed += 1;
    }
    out(&format!("restored record {id}: {changed} files written or removed\n"))
}
