//! The configuration history: every configuration `run` applies, kept in
//! a SQLite database (`[history] path`), which `sqlite3` opens as well as
//! `sgswitch history` does.
//!
//! A record holds the text of every file of the configuration as it was
//! loaded (`Config::sources`), the generation it became, and when it was
//! first and last applied. A configuration applied within
//! `coalesce_seconds` of a record's first one replaces that record's files
//! (a burst of edits is one record, holding where the burst ended); one
//! identical to the latest record only touches it. Records whose last
//! application is older than `retention_days` are removed, but never the
//! latest. Records are per configuration directory (its canonical path),
//! so hosts or tests with several directories can share a database.
//!
//! Recording is the reloader's work, after the new configuration is
//! published: never a poll loop's, and a failure to record is logged and
//! changes nothing else.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use sgswitch_config::History;

/// One record, as `history list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Record {
    pub id: i64,
    /// Unix milliseconds: first and last applied.
    pub first_ms: i64,
    pub last_ms: i64,
    pub generation: i64,
    pub files: usize,
}

/// The files of a record or a directory: (relative path, text), sorted.
pub type Files = Vec<(String, String)>;

/// An open history of one configuration directory.
#[derive(Debug)]
pub struct Store {
    db: Connection,
    dir: String,
}

/// The key of a directory in the database: its canonical path.
fn dir_key(dir: &Path) -> String {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()).display().to_string()
}

impl Store {
    /// Opens (making it if needed) the database at `path` for `dir`.
    ///
    /// # Errors
    /// The database cannot be made or opened.
    pub fn open(path: &Path, dir: &Path) -> Result<Store, String> {
        let err = |e: &dyn std::fmt::Display| format!("history {}: {e}", path.display());
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| err(&e))?;
        }
        let db = Connection::open(path).map_err(|e| err(&e))?;
        db.busy_timeout(std::time::Duration::from_secs(2)).map_err(|e| err(&e))?;
        db.execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE IF NOT EXISTS records (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 dir TEXT NOT NULL,
                 first_ms INTEGER NOT NULL,
                 last_ms INTEGER NOT NULL,
                 generation INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS records_dir ON records (dir, id);
             CREATE TABLE IF NOT EXISTS files (
                 record INTEGER NOT NULL REFERENCES records (id) ON DELETE CASCADE,
                 path TEXT NOT NULL,
                 text TEXT NOT NULL,
                 PRIMARY KEY (record, path)
             );",
        )
        .map_err(|e| err(&e))?;
        Ok(Store { db, dir: dir_key(dir) })
    }

    /// Records `files` applied as `generation` at `now_ms` (see the module
    /// docs for coalescing and retention); the record's id.
    ///
    /// # Errors
    /// The database refused the write.
    pub fn record(&mut self, files: &[(String, String)], generation: u32, now_ms: i64, h: &History) -> Result<i64, String> {
        let mut files = files.to_vec();
        files.sort();
        let latest = self.latest().map_err(|e| e.to_string())?;
        let tx = self.db.transaction().map_err(|e| e.to_string())?;
        let id = match latest {
            Some((id, _, old)) if old == files => {
                tx.execute("UPDATE records SET last_ms = ?1, generation = ?2 WHERE id = ?3", params![now_ms, generation, id])
                    .map_err(|e| e.to_string())?;
                id
            }
            Some((id, first_ms2, _)) if now_ms - first_ms2 < i64::from(h.coalesce_seconds) * 1000 => {
                tx.execute("UPDATE records SET last_ms = ?1, generation = ?2 WHERE id = ?3", params![now_ms, generation, id])
                    .map_err(|e| e.to_string())?;
                tx.execute("DELETE FROM files WHERE record = ?1", params![id]).map_err(|e| e.to_string())?;
                insert_files(&tx, id, &files)?;
                id
            }
            _ => {
                tx.execute(
                    "INSERT INTO records (dir, first_ms, last_ms, generation) VALUES (?1, ?2, ?2, ?3)",
                    params![self.dir, now_ms, generation],
                )
                .map_err(|e| e.to_string())?;
                let id = tx.last_insert_rowid();
                insert_files(&tx, id, &files)?;
                id
            }
        };
        let horizon = now_ms - i64::from(h.retention_days) * 86_400_000;
        tx.execute("DELETE FROM records WHERE dir = ?1 AND last_ms < ?2 AND id <> ?3", params![self.dir, horizon, id])
            .map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
        Ok(id)
    }

    /// The latest record's id, first time and files.
    fn latest(&self) -> rusqlite::Result<Option<(i64, i64, Files)>> {
        let row: Option<(i64, i64)> = self
            .db
            .query_row("SELECT id, first_ms FROM records WHERE dir = ?1 ORDER BY id DESC LIMIT 1", params![self.dir], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        row.map(|(id, first)| Ok((id, first, self.files(id)?))).transpose()
    }

    /// Every record of the directory, oldest first.
    ///
    /// # Errors
    /// The database cannot be read.
    pub fn list(&self) -> Result<Vec<Record>, String> {
        let mut q = self
            .db
            .prepare(
                "SELECT r.id, r.first_ms, r.last_ms, r.generation, (SELECT count(*) FROM files f WHERE f.record = r.id)
                 FROM records r WHERE r.dir = ?1 ORDER BY r.id",
            )
            .map_err(|e| e.to_string())?;
        let rows = q
            .query_map(params![self.dir], |r| {
                Ok(Record {
                    id: r.get(0)?,
                    first_ms: r.get(1)?,
                    last_ms: r.get(2)?,
                    generation: r.get(3)?,
                    files: r.get::<_, i64>(4)?.try_into().unwrap_or(0),
                })
            })
            .map_err(|e| e.to_string())?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|e| e.to_string())
    }

    /// The files of record `id`, sorted by path.
    ///
    /// # Errors
    /// No such record of this directory, or the database cannot be read.
    pub fn files_of(&self, id: i64) -> Result<Files, String> {
        let known: Option<i64> = self
            .db
            .query_row("SELECT id FROM records WHERE id = ?1 AND dir = ?2", params![id, self.dir], |r| r.get(0))
            .optional()
            .map_err(|e| e.to_string())?;
        if known.is_none() {
            return Err(format!("no record {id} of {} in the history", self.dir));
        }
        self.files(id).map_err(|e| e.to_string())
    }

    fn files(&self, id: i64) -> rusqlite::Result<Files> {
        let mut q = self.db.prepare("SELECT path, text FROM files WHERE record = ?1 ORDER BY path")?;
        let rows = q.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }
}

fn insert_files(tx: &rusqlite::Transaction<'_>, id: i64, files: &[(String, String)]) -> Result<(), String> {
    let mut q = tx.prepare("INSERT INTO files (record, path, text) VALUES (?1, ?2, ?3)").map_err(|e| e.to_string())?;
    for (p, t) in files {
        q.execute(params![id, p, t]).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The configuration files of `dir` as they are now: host.toml and the
/// `.toml` files of the three folders, sorted.
///
/// # Errors
/// A file cannot be read.
pub fn current_files(dir: &Path) -> Result<Files, String> {
    let mut out = Vec::new();
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    if dir.join("host.toml").is_file() {
        out.push(("host.toml".to_owned(), read(&dir.join("host.toml"))?));
    }
    for sub in ["ports", "groups", "prefix-lists"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "toml") && p.is_file() {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                out.push((format!("{sub}/{name}"), read(&p)?));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A unified diff from `a` to `b`, file by file (`similar`'s).
pub fn diff(a: &Files, b: &Files, a_name: &str, b_name: &str) -> String {
    let mut paths: Vec<&str> = a.iter().chain(b).map(|(p, _)| p.as_str()).collect();
    paths.sort_unstable();
    paths.dedup();
    let text_of = |f: &Files, p: &str| f.iter().find(|(q, _)| q == p).map(|(_, t)| t.clone());
    let mut out = String::new();
    for p in paths {
        let (x, y) = (text_of(a, p), text_of(b, p));
        if x == y {
            continue;
        }
        let (x, y) = (x.unwrap_or_default(), y.unwrap_or_default());
        let d = similar::TextDiff::from_lines(&x, &y);
        out += &d.unified_diff().header(&format!("{a_name}/{p}"), &format!("{b_name}/{p}")).to_string();
    }
    out
}

/// Where the history of a configuration with `h` is, if it is kept.
pub fn path(h: &History) -> Option<PathBuf> {
    h.enabled.then(|| h.path.clone())
}
