//! `sgswitch lint`: findings in a valid configuration
//! ([`sgswitch::tools::lint`]).

use std::path::PathBuf;

use sgswitch::tools::lint::lint;

use super::{CliError, load_policy, out};

#[derive(Debug, clap::Args)]
pub(crate) struct LintArgs {
    /// The configuration directory.
    dir: PathBuf,
    /// One JSON object per finding.
    #[arg(long)]
    json: bool,
    /// Exit 1 when there is any finding.
    #[arg(long)]
    strict: bool,
}

pub(crate) fn run(a: &LintArgs) -> Result<(), CliError> {
    let policy = load_policy(&a.dir)?;
    let findings = lint(&policy);
    let text = if a.json {
        findings.iter().map(|f| serde_json::to_string(f).unwrap_or_default() + "\n").collect::<String>()
    } else if findings.is_empty() {
        "no findings\n".to_owned()
    } else {
        let n = findings.len();
        let mut s: String = findings.iter().map(|f| format!("{f}\n")).collect();
        s += &format!("{n} finding{}\n", if n == 1 { "" } else { "s" });
        s
    };
    out(&text)?;
    if a.strict && !findings.is_empty() {
        return Err(CliError::Usage(format!("{} lint findings (--strict)", findings.len())));
    }
    Ok(())
}
