//! `sgswitch export`, `import` and `clone`: groups to and from the
//! providers' formats, and a group copied under a new id. What is written
//! into the directory is checked first, with the rest of the directory, in
//! a copy: the directory never holds a file `check` refuses, so a running
//! switch never sees one.

use std::path::{Path, PathBuf};

use sgswitch::control::history::current_files;
use sgswitch::tools::exchange::{self, Format, Made};
use sgswitch_config::{Config, Group, load_dir};

use super::{CliError, out};

#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    /// The configuration directory.
    dir: PathBuf,
    /// The group to export.
    group: String,
    #[arg(long, value_enum)]
    format: Format,
    /// Write here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ImportArgs {
    /// The configuration directory; the group is written to its groups/.
    dir: PathBuf,
    /// The provider's file ("-": standard input).
    file: PathBuf,
    #[arg(long, value_enum)]
    format: Format,
    /// The group's id (required for tencent and csv, whose files name no
    /// group; for alibaba, instead of its SecurityGroupId).
    #[arg(long)]
    id: Option<String>,
    /// Replace the group if the directory has it.
    #[arg(long)]
    replace: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CloneArgs {
    /// The configuration directory.
    dir: PathBuf,
    /// The group to copy.
    group: String,
    /// The copy's id.
    new_id: String,
}

/// Group `id` of the directory, which must load.
fn group(dir: &Path, id: &str) -> Result<Group, CliError> {
    let cfg: Config = load_dir(dir).map_err(CliError::Config)?;
    cfg.groups.into_iter().find(|g| g.id == id).ok_or_else(|| CliError::Usage(format!("no group \"{id}\" in {}", dir.display())))
}

fn warn(made: &Made) {
    for w in &made.warnings {
        eprintln!("warning: {w}");
    }
}

pub(crate) fn export(a: &ExportArgs) -> Result<(), CliError> {
    let g = group(&a.dir, &a.group)?;
    let made = exchange::export(&g, a.format).map_err(|e| CliError::Usage(e.join("\nerror: ")))?;
    warn(&made);
    match &a.out {
        Some(p) => std::fs::write(p, &made.text).map_err(|e| CliError::Runtime(format!("{}: {e}", p.display()))),
        None => out(&made.text),
    }
}

pub(crate) fn import(a: &ImportArgs) -> Result<(), CliError> {
    let text = if a.file == Path::new("-") { std::io::read_to_string(std::io::stdin()) } else { std::fs::read_to_string(&a.file) }
        .map_err(|e| CliError::Usage(format!("{}: cannot read: {e}", a.file.display())))?;
    let (id, made) = exchange::import(&text, a.format, a.id.as_deref())
        .map_err(|e| CliError::Usage(e.iter().map(|m| format!("{}: {m}", a.file.display())).collect::<Vec<_>>().join("\nerror: ")))?;
    warn(&made);
    write_group(&a.dir, &id, &made.text, a.replace)?;
    out(&format!("imported {} rules into groups/{id}.toml\n", made.rules))
}

pub(crate) fn clone(a: &CloneArgs) -> Result<(), CliError> {
    let g = group(&a.dir, &a.group)?;
    if !a.new_id.starts_with("sg-") {
        return Err(CliError::Usage(format!("group id \"{}\" must start with \"sg-\"", a.new_id)));
    }
    let text = exchange::clone_text(&g, &a.new_id).map_err(CliError::Runtime)?;
    write_group(&a.dir, &a.new_id, &text, false)?;
    out(&format!("cloned {} into groups/{}.toml\n", a.group, a.new_id))
}

/// Writes `groups/<id>.toml` once the directory with it passes `check`
/// (tried in a scratch copy), atomically.
fn write_group(dir: &Path, id: &str, text: &str, replace: bool) -> Result<(), CliError> {
    let rel = format!("groups/{id}.toml");
    if dir.join(&rel).exists() && !replace {
        return Err(CliError::Usage(format!("{} exists (--replace replaces it)", dir.join(&rel).display())));
    }
    let mut files = current_files(dir).map_err(CliError::Runtime)?;
    files.retain(|(p, _)| *p != rel);
    files.push((rel.clone(), text.to_owned()));
    super::scratch_check(&files, &dir.display().to_string())
        .map_err(|msg| CliError::Usage(format!("the directory with {rel} would not load; nothing was written:\n{msg}")))?;
    super::write_atomically(dir, &rel, text)
}
