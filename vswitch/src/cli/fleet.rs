//! `sgswitch push` and `sgswitch pull`: a directory's groups and prefix
//! lists to and from the fleet's store (`[store]` in its host.toml).

use std::path::Path;

use sgswitch::control::store::{self, PushError};
use sgswitch_config::{Store, load_dir, load_host};

use super::{CliError, out, write_atomically};

fn settings(dir: &Path, verb: &str) -> Result<Store, CliError> {
    load_host(dir).map_err(CliError::Config)?.store.ok_or_else(|| {
        CliError::Usage(format!(
            "{verb}: {} has no [store]: name the etcd endpoints there (kind = \"etcd\", endpoints = [...])",
            dir.join("host.toml").display()
        ))
    })
}

pub(crate) fn push(dir: &Path) -> Result<(), CliError> {
    let s = settings(dir, "push")?;
    let mut cfg = load_dir(dir).map_err(CliError::Config)?;
    let sources = std::mem::take(&mut cfg.sources);
    let r = store::block_on(store::push(&s, &cfg, &sources)).map_err(CliError::Runtime)?;
    let p = r.map_err(|e| match e {
        PushError::Invalid(m) => CliError::Usage(m),
        e @ (PushError::Raced { .. } | PushError::Store(_)) => CliError::Runtime(e.to_string()),
    })?;
    if p.put.is_empty() && p.deleted.is_empty() {
        return out(&format!("nothing to push: the store holds this configuration (revision {})\n", p.revision));
    }
    let mut text = format!("pushed as revision {}: {} put, {} deleted\n", p.revision, p.put.len(), p.deleted.len());
    for k in &p.put {
        text += &format!("  put    {k}\n");
    }
    for k in &p.deleted {
        text += &format!("  delete {k}\n");
    }
    out(&text)
}

pub(crate) fn pull(dir: &Path) -> Result<(), CliError> {
    let s = settings(dir, "pull")?;
    let snap = store::block_on(store::pull(&s)).map_err(CliError::Runtime)?.map_err(CliError::Runtime)?;
    let mut removed = 0;
    for (folder, items) in [("groups", snap.groups()), ("prefix-lists", snap.prefix_lists())] {
        for (id, text) in items {
            write_atomically(dir, &format!("{folder}/{id}.toml"), text)?;
        }
        let Ok(rd) = std::fs::read_dir(dir.join(folder)) else { continue };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            if p.extension().is_some_and(|x| x == "toml") && !items.contains_key(&stem) {
                std::fs::remove_file(&p).map_err(|e| CliError::Runtime(format!("{}: {e}", p.display())))?;
                removed += 1;
            }
        }
    }
    out(&format!(
        "pulled revision {}: {} groups, {} prefix lists written to {}; {removed} file(s) the store does not hold removed\n",
        snap.revision,
        snap.groups().len(),
        snap.prefix_lists().len(),
        dir.display()
    ))
}
