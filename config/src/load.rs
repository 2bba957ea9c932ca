//! Loading a configuration directory: every file read, every error found in
//! one pass, then the checks that span files (references, limits, overlaps).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use crate::error::{ConfigError, ConfigErrors};
use crate::model::*;
use crate::reader::{At, Source, Table};

/// Loads and validates the directory `dir` (layout in `interfaces.md`).
///
/// Returns every error found, sorted by file and position, or the
/// configuration with its warnings.
pub fn load_dir(dir: &Path) -> Result<Config, ConfigErrors> {
    load_dir_with(dir, None)
}

/// Reads only `dir/host.toml` (defaults when it is missing): what a
/// switch needs to know before the rest, such as where its store is.
///
/// # Errors
/// The file's messages.
pub fn load_host(dir: &Path) -> Result<Host, ConfigErrors> {
    let (mut errors, mut warnings, mut seen) = (Vec::new(), Vec::new(), Seen::default());
    let path = dir.join("host.toml");
    if !present(&path) {
        return Ok(Host::default());
    }
    let host = read_file(&path, "host", Limits::default().max_file_bytes, &mut seen, &mut errors, &mut warnings, |src, t| {
        Some(parse_host(src, t))
    });
    match host {
        Some(h) if errors.is_empty() => Ok(h),
        _ => {
            sort_messages(&mut errors);
            Err(ConfigErrors(errors))
        }
    }
}

/// Loads `dir` as [`load_dir`] does, or, given a store's `overlay`, its
/// `host.toml` and `ports/` with the overlay's groups and prefix lists
/// (the directory's own `groups/` and `prefix-lists/` are then not read)
/// and the other hosts' ports as members of their groups.
///
/// A text of the overlay is named in messages by its key. Another host's
/// port that does not load is left out with a warning: it is that host's
/// to mend, and it takes nothing away from this one.
pub fn load_dir_with(dir: &Path, overlay: Option<&Overlay>) -> Result<Config, ConfigErrors> {
    load_dir_reusing(dir, overlay, &mut None)
}

/// What a load read of the directory's own files (`host.toml` and
/// `ports/`), with each file's size and modification time, for the next
/// load to take as it is when none of them changed.
#[derive(Clone, Debug, Default)]
pub struct LocalFiles {
    stamp: Vec<Stamp>,
    host: Host,
    ports: Vec<Port>,
    texts: Vec<(String, String)>,
    declared: Vec<(String, String, PathBuf)>,
    warnings: Vec<ConfigError>,
    /// Set by [`LocalFiles::unchanged`] for the next load only.
    unchanged: bool,
}

impl LocalFiles {
    /// Says that nothing has written the directory's files since they were
    /// read (a watcher on the directory saw no event): the next load takes
    /// them without listing them and comparing sizes and times, which for
    /// a host of a few hundred ports is most of a store revision's load.
    /// The word holds for one load.
    pub fn unchanged(&mut self) {
        self.unchanged = true;
    }
}

/// A file's path, size and modification time.
pub type Stamp = (PathBuf, u64, Option<std::time::SystemTime>);

/// `host.toml` and the `.toml` files of `folders` (in order, each sorted)
/// with their sizes and modification times: two equal lists taken apart
/// mean nobody wrote in between. The flag is false when a folder that is
/// there could not be listed (its files are then not in the list).
pub fn file_stamps(dir: &Path, folders: &[&str]) -> (Vec<Stamp>, bool) {
    let stamp_of = |p: PathBuf, m: Option<std::fs::Metadata>| {
        let len = m.as_ref().map_or(0, std::fs::Metadata::len);
        let at = m.and_then(|m| m.modified().ok());
        (p, len, at)
    };
    let host = dir.join("host.toml");
    let m = std::fs::metadata(&host).ok();
    let mut stamps = vec![stamp_of(host, m)];
    let mut complete = true;
    for f in folders {
        let here = dir.join(f);
        let rd = match std::fs::read_dir(&here) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(_) => {
                complete = false;
                continue;
            }
        };
        // The entries' own metadata (a lookup in the folder, not a walk
        // of the whole path per file); a symbolic link's is its target's.
        let mut files = Vec::new();
        for e in rd {
            let Ok(e) = e else {
                complete = false;
                continue;
            };
            let name = e.file_name();
            if Path::new(&name).extension().is_none_or(|x| x != "toml") {
                continue;
            }
            let m = match e.file_type() {
                Ok(t) if t.is_symlink() => std::fs::metadata(e.path()).ok(),
                _ => e.metadata().ok(),
            };
            files.push((name, m));
        }
        files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        stamps.extend(files.into_iter().map(|(name, m)| stamp_of(here.join(name), m)));
    }
    (stamps, complete)
}

/// The stamps of the directory's own files (`host.toml`, `ports/`), if
/// every folder could be listed.
fn stamp(dir: &Path) -> Option<Vec<Stamp>> {
    let (stamps, complete) = file_stamps(dir, &["ports"]);
    complete.then_some(stamps)
}

/// [`load_dir_with`] that, given a store's `overlay`, takes `host.toml`
/// and the ports from `local` (the last load's) when none of those files
/// changed size or modification time, and leaves in `local` what this load
/// read: a new store revision costs a host its groups, not its own files.
/// Without an overlay `local` is not used.
///
/// # Errors
/// As [`load_dir_with`].
pub fn load_dir_reusing(dir: &Path, overlay: Option<&Overlay>, local: &mut Option<LocalFiles>) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    if !dir.is_dir() {
        return Err(ConfigErrors(vec![ConfigError {
            file: dir.to_path_buf(),
            line: 0,
            col: 0,
            msg: "not a configuration directory (it should hold host.toml, ports/ and groups/)".into(),
        }]));
    }

    let mut seen = Seen { dir: dir.to_path_buf(), ..Seen::default() };
    let known = overlay.is_some() && local.as_ref().is_some_and(|l| l.unchanged);
    if let Some(l) = local.as_mut() {
        l.unchanged = false;
    }
    let now = if known { None } else { overlay.and_then(|_| stamp(dir)) };
    let reuse = match (local.as_ref(), &now) {
        (Some(l), _) if known => Some(l.clone()),
        (Some(l), Some(now)) if l.stamp == *now => Some(l.clone()),
        _ => None,
    };
    let (host, mut ports) = if let Some(l) = reuse {
        seen.texts = l.texts;
        seen.declared = l.declared;
        warnings = l.warnings;
        (l.host, l.ports)
    } else {
        let host_path = dir.join("host.toml");
        // host.toml is read under the default size limit; the rest under its own.
        let host = if present(&host_path) {
            read_file(&host_path, "host", Limits::default().max_file_bytes, &mut seen, &mut errors, &mut warnings, |src, t| {
                Some(parse_host(src, t))
            })
            .unwrap_or_default()
        } else {
            Host::default()
        };
        let max = host.limits.max_file_bytes;
        let mut ports = Vec::new();
        for path in toml_files(&dir.join("ports"), &mut errors) {
            if let Some(p) = read_file(&path, "port", max, &mut seen, &mut errors, &mut warnings, |src, t| parse_port(src, t, &path, &host))
            {
                ports.push(p);
            }
        }
        ports.sort_by(|a, b| a.id.cmp(&b.id));
        *local = match now {
            Some(stamp) if errors.is_empty() => Some(LocalFiles {
                stamp,
                host: host.clone(),
                ports: ports.clone(),
                texts: seen.texts.clone(),
                declared: seen.declared.clone(),
                warnings: warnings.clone(),
                unchanged: false,
            }),
            _ => None,
        };
        (host, ports)
    };
    let max = host.limits.max_file_bytes;
    let mut groups = Vec::new();
    let mut prefix_lists = Vec::new();
    if let Some(o) = overlay {
        for folder in ["groups", "prefix-lists"] {
            let here = dir.join(folder);
            if !toml_files(&here, &mut Vec::new()).is_empty() {
                warnings.push(ConfigError {
                    file: here,
                    line: 0,
                    col: 0,
                    msg: "not read: with [store], groups and prefix lists come from the store (`sgswitch push` puts them there)".into(),
                });
            }
        }
        for g in &o.groups {
            if let Some(g) = read_stored(g, "security group", max, &mut seen, &mut errors, &mut warnings, |src, t| {
                parse_group(src, t, Path::new(&g.key), &host)
            }) {
                groups.push(g);
            }
        }
        for l in &o.prefix_lists {
            if let Some(l) = read_stored(l, "prefix list", max, &mut seen, &mut errors, &mut warnings, |src, t| {
                parse_prefix_list(src, t, Path::new(&l.key))
            }) {
                prefix_lists.push(l);
            }
        }
    } else {
        for path in toml_files(&dir.join("groups"), &mut errors) {
            if let Some(g) =
                read_file(&path, "security group", max, &mut seen, &mut errors, &mut warnings, |src, t| parse_group(src, t, &path, &host))
            {
                groups.push(g);
            }
        }
        for path in toml_files(&dir.join("prefix-lists"), &mut errors) {
            if let Some(p) =
                read_file(&path, "prefix list", max, &mut seen, &mut errors, &mut warnings, |src, t| parse_prefix_list(src, t, &path))
            {
                prefix_lists.push(p);
            }
        }
    }
    ports.sort_by(|a, b| a.id.cmp(&b.id));
    groups.sort_by(|a, b| a.id.cmp(&b.id));
    prefix_lists.sort_by(|a, b| a.id.cmp(&b.id));

    let sources = std::mem::take(&mut seen.texts);
    let mut cfg = Config { dir: dir.to_path_buf(), host, ports, groups, prefix_lists, warnings: Vec::new(), sources, fleet: None };
    if let Some(o) = overlay {
        cfg.fleet = Some(crate::fleet::join(&mut cfg, o, &mut warnings));
    }
    duplicate_ids(&seen, &mut errors);
    cross_check(&cfg, &seen.broken, &mut errors, &mut warnings);

    if errors.is_empty() {
        sort_messages(&mut warnings);
        Ok(Config { warnings, ..cfg })
    } else {
        sort_messages(&mut errors);
        Err(ConfigErrors(errors))
    }
}

fn sort_messages(v: &mut Vec<ConfigError>) {
    v.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
    v.dedup();
}

/// Whether a directory entry is there at all: a symbolic link counts, even
/// one that points nowhere (reading it then says so).
fn present(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Why `path`, which is there, cannot be followed: a symbolic link that
/// points nowhere or in a loop, or the error itself.
fn unreachable(path: &Path, e: &std::io::Error) -> String {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            let to = std::fs::read_link(path).map_or_else(|_| "?".to_owned(), |t| t.display().to_string());
            format!("is a symbolic link to {to}, which cannot be followed ({e}): it points nowhere or in a loop")
        }
        _ => format!("cannot be read: {e}"),
    }
}

/// The `.toml` files of a folder, sorted; a missing folder is empty. Other
/// entries (editor backups, READMEs) are not configuration and are
/// skipped. A folder that is there but cannot be listed, or is not a
/// folder, is an error: read as empty, it would remove every port (or
/// group) on a reload.
fn toml_files(dir: &Path, errors: &mut Vec<ConfigError>) -> Vec<PathBuf> {
    let whole = |msg: String| ConfigError { file: dir.to_path_buf(), line: 0, col: 0, msg };
    if !present(dir) {
        return Vec::new();
    }
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            errors.push(whole("is not a folder: it should hold one .toml file per object".into()));
            return Vec::new();
        }
        Err(e) => {
            errors.push(whole(unreachable(dir, &e)));
            return Vec::new();
        }
    }
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            errors.push(whole(format!("cannot be listed: {e}")));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in rd {
        match entry {
            // Every `.toml` entry, whatever it is: `read_file` says what is
            // wrong with one that is not a readable regular file.
            Ok(e) if e.path().extension().is_some_and(|x| x == "toml") => out.push(e.path()),
            Ok(_) => {}
            Err(e) => errors.push(whole(format!("cannot be listed: {e}"))),
        }
    }
    out.sort();
    out
}

/// The text of a configuration file: a regular file (a symbolic link to
/// one is fine) of at most `max` bytes, UTF-8. Anything else is an error
/// naming the path: a directory, FIFO, socket or device (a FIFO would block
/// the loader forever), a link that points nowhere or in a loop, a file over
/// the limit (`[limits] max_file_bytes`), or text that is not UTF-8.
fn read_text(path: &Path, max: u64) -> Result<String, String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| unreachable(path, &e))?;
    if !meta.is_file() {
        let what = if meta.is_dir() { "a folder" } else { "not a regular file (a FIFO, socket or device)" };
        return Err(format!("is {what}: configuration files are regular files"));
    }
    let over = |n: u64| format!("is {n} bytes, over the limit of {max} bytes ([limits] max_file_bytes in host.toml)");
    if meta.len() > max {
        return Err(over(meta.len()));
    }
    let f = std::fs::File::open(path).map_err(|e| format!("cannot be read: {e}"))?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    f.take(max.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| format!("cannot be read: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(over(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| format!("is not UTF-8 text (byte {} is not)", e.utf8_error().valid_up_to()))
}

/// What the loader learnt of every file, loaded or not: the id it declares
/// (for duplicate detection) and whether it had errors (so that references
/// to it are not reported a second time as missing).
#[derive(Default)]
struct Seen {
    declared: Vec<(String, String, PathBuf)>,
    broken: HashSet<String>,
    /// The directory, and the files read from it (relative path, text).
    dir: PathBuf,
    texts: Vec<(String, String)>,
}

fn read_file<T>(
    path: &Path,
    kind: &str,
    max: u64,
    seen: &mut Seen,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigError>,
    parse: impl FnOnce(&mut Source<'_>, &Table<'_, '_>) -> Option<T>,
) -> Option<T> {
    let text = match read_text(path, max) {
        Ok(t) => t,
        Err(msg) => {
            errors.push(ConfigError { file: path.to_path_buf(), line: 0, col: 0, msg });
            seen.broken.insert(file_stem(path));
            return None;
        }
    };
    let rel = path.strip_prefix(&seen.dir).unwrap_or(path).to_string_lossy().into_owned();
    let src = Source::new(path, &text);
    let out = read_source(src, kind, seen, errors, warnings, parse);
    seen.texts.push((rel, text));
    out
}

/// A text of a store, read as [`read_file`] reads a file (its key in the
/// place of the path); it is not among the sources the history records.
fn read_stored<T>(
    s: &Stored,
    kind: &str,
    max: u64,
    seen: &mut Seen,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigError>,
    parse: impl FnOnce(&mut Source<'_>, &Table<'_, '_>) -> Option<T>,
) -> Option<T> {
    if s.text.len() as u64 > max {
        let msg = format!("is {} bytes, over the limit of {max} bytes ([limits] max_file_bytes in host.toml)", s.text.len());
        errors.push(ConfigError { file: PathBuf::from(&s.key), line: 0, col: 0, msg });
        seen.broken.insert(s.id.clone());
        return None;
    }
    read_source(Source::stored(&s.key, &s.id, &s.text), kind, seen, errors, warnings, parse)
}

fn read_source<T>(
    mut src: Source<'_>,
    kind: &str,
    seen: &mut Seen,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigError>,
    parse: impl FnOnce(&mut Source<'_>, &Table<'_, '_>) -> Option<T>,
) -> Option<T> {
    let path = src.path.clone();
    let path = path.as_path();
    let doc = src.parse();
    let out = doc.and_then(|doc| {
        let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let table = Table::new(&doc, name);
        if let Some(id) = table.peek_string("id") {
            seen.declared.push((kind.to_string(), id, path.to_path_buf()));
        }
        parse(&mut src, &table)
    });
    let ok = src.errors.is_empty();
    errors.append(&mut src.errors);
    warnings.append(&mut src.warnings);
    if ok {
        out
    } else {
        seen.broken.insert(src.stem);
        None
    }
}

fn file_stem(path: &Path) -> String {
    path.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned())
}

/// Reads `id`, which must equal the file name, carry `prefix` (empty for
/// ports) and use only letters, digits, '-', '_' and '.'.
fn read_id(src: &mut Source<'_>, t: &Table<'_, '_>, prefix: &str, kind: &str) -> Option<At<String>> {
    let id = t.required_string(src, "id", &format!("every {kind} file names its id, the same as the file name"))?;
    let stem = src.stem.clone();
    if id.v != stem && src.stored {
        src.error(&id.span, format!("id \"{}\" differs from the key it is stored under (\"{stem}\"): they must be equal", id.v));
    } else if id.v != stem {
        src.error(&id.span, format!("id \"{}\" differs from the file name \"{stem}.toml\": they must be equal", id.v));
    }
    if !id.v.starts_with(prefix) {
        src.error(&id.span, format!("{kind} id \"{}\" must start with \"{prefix}\"", id.v));
    } else if id.v.len() == prefix.len() || !id.v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        src.error(&id.span, format!("{kind} id \"{}\" may only use letters, digits, '-', '_' and '.'", id.v));
    }
    Some(id)
}

// ---------------------------------------------------------------- host.toml

/// `[store]`: `kind = "etcd"`, its endpoints, a key prefix, this host's
/// name, the lease and timeouts, TLS files.
fn parse_store(src: &mut Source<'_>, t: &Table<'_, '_>) -> Option<Store> {
    t.only_keys(src, &["kind", "endpoints", "prefix", "host", "lease_ttl_seconds", "timeout_ms", "ca_file", "cert_file", "key_file"]);
    let kind = t.choice(src, "kind", &["etcd"]);
    if kind.is_none() && !t.has("kind") {
        src.error(&t.span, "[store] needs `kind = \"etcd\"` (the only store there is)");
    }
    let mut endpoints = Vec::new();
    match t.strings(src, "endpoints") {
        Some(list) if !list.is_empty() => {
            for e in list {
                let ok = ["http://", "https://"]
                    .iter()
                    .any(|s| e.v.strip_prefix(s).is_some_and(|rest| rest.contains(':') && !rest.contains('/')));
                if ok {
                    endpoints.push(e.v);
                } else {
                    src.error(&e.span, format!("endpoint \"{}\" is not of the form \"http://host:port\" or \"https://host:port\"", e.v));
                }
            }
        }
        Some(_) => src.error(&t.span, "[store] endpoints is empty: name at least one etcd endpoint"),
        None if !t.has("endpoints") => src.error(&t.span, "[store] needs `endpoints`, e.g. [\"http://127.0.0.1:2379\"]"),
        None => {}
    }
    let mut prefix = "/sgswitch".to_owned();
    if let Some(p) = t.string(src, "prefix") {
        if p.v.is_empty() || p.v.ends_with('/') || p.v.contains(char::is_whitespace) {
            src.error(&p.span, "`prefix` is a key prefix such as \"/sgswitch\": not empty, no spaces, no trailing '/'");
        } else {
            prefix = p.v;
        }
    }
    let mut host = Store::default_host();
    if let Some(h) = t.string(src, "host") {
        if h.v.is_empty() || !h.v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            src.error(&h.span, "`host` may only use letters, digits, '-', '_' and '.'");
        } else {
            host = h.v;
        }
    }
    let lease_ttl_seconds = t.u32_in(src, "lease_ttl_seconds", 3, 3600).unwrap_or(10);
    let timeout_ms = t.u32_in(src, "timeout_ms", 100, 60_000).unwrap_or(2000);
    let file = |src: &mut Source<'_>, key: &str| t.string(src, key).map(|f| PathBuf::from(f.v));
    let (ca_file, cert_file, key_file) = (file(src, "ca_file"), file(src, "cert_file"), file(src, "key_file"));
    if cert_file.is_some() != key_file.is_some() {
        src.error(&t.span, "[store] cert_file and key_file go together: a client certificate needs its key");
    }
    Some(Store { endpoints, prefix, host, lease_ttl_seconds, timeout_ms, ca_file, cert_file, key_file })
}

fn parse_host(src: &mut Source<'_>, t: &Table<'_, '_>) -> Host {
    let mut h = Host::default();
    t.only_keys(
        src,
        &[
            "policy_model",
            "on_policy_change",
            "blocked_egress",
            "infra_allow",
            "dhcp_server",
            "uplink",
            "datapath",
            "metrics",
            "control",
            "flow_log",
            "conntrack",
            "limits",
            "reload",
            "lint",
            "history",
            "store",
        ],
    );
    if let Some(st) = t.table(src, "store") {
        h.store = parse_store(src, &st);
    }
    if let Some(hs) = t.table(src, "history") {
        hs.only_keys(src, &["enabled", "path", "retention_days", "coalesce_seconds"]);
        let hist = &mut h.history;
        hist.enabled = hs.boolean(src, "enabled").unwrap_or(hist.enabled);
        if let Some(p) = hs.string(src, "path") {
            if p.v.is_empty() || p.v.contains('\0') {
                src.error(&p.span, "`path` must be a file path");
            } else {
                hist.path = PathBuf::from(p.v);
            }
        }
        hist.retention_days = hs.u32_in(src, "retention_days", 1, 30).unwrap_or(hist.retention_days);
        hist.coalesce_seconds = hs.u32_in(src, "coalesce_seconds", 0, 3600).unwrap_or(hist.coalesce_seconds);
    }
    if let Some(l) = t.table(src, "lint") {
        l.only_keys(src, &["require_rule_ids"]);
        h.lint.require_rule_ids = l.boolean(src, "require_rule_ids").unwrap_or(false);
    }
    if let Some(m) = t.choice(src, "policy_model", &["priority", "ordered", "union"]) {
        h.policy_model = match m.v.as_str() {
            "ordered" => PolicyModel::Ordered,
            "union" => PolicyModel::Union,
            _ => PolicyModel::Priority,
        };
    }
    if let Some(m) = t.choice(src, "on_policy_change", &["revalidate", "keep"]) {
        h.on_policy_change = if m.v == "keep" { OnPolicyChange::Keep } else { OnPolicyChange::Revalidate };
    }
    if let Some(list) = t.strings(src, "blocked_egress") {
        h.blocked_egress = list.iter().filter_map(|s| parse_blocked(src, s)).collect();
    }
    if let Some(list) = t.strings(src, "infra_allow") {
        h.infra_allow = list.iter().filter_map(|s| cidr_at(src, s, "infra_allow")).collect();
    }
    if let Some(list) = t.strings(src, "dhcp_server") {
        h.dhcp_server = list.iter().filter_map(|s| cidr_at(src, s, "dhcp_server")).collect();
    }
    if let Some(u) = t.table(src, "uplink") {
        u.only_keys(src, &["interface"]);
        h.uplink_interface = interface_name(src, &u);
    }
    if let Some(d) = t.table(src, "datapath") {
        d.only_keys(
            src,
            &[
                "cores",
                "mode",
                "zero_copy",
                "busy_poll",
                "frames",
                "ring_size",
                "prefer_busy_poll",
                "busy_poll_budget",
                "gro_flush_timeout_us",
                "napi_defer_hard_irqs",
                "idle_spin_us",
                "fast_path",
                "napi_threads",
                "core_idle",
            ],
        );
        if let Some(cores) = d.integers(src, "cores") {
            let mut v = Vec::new();
            for c in cores {
                match usize::try_from(c.v) {
                    Ok(n) if n < 4096 => v.push(n),
                    _ => src.error(&c.span, format!("core {} is not a CPU number", c.v)),
                }
            }
            if v.is_empty() {
                src.error(&d.span, "`cores` must name at least one CPU for a poll loop");
            }
            h.datapath.cores = v;
        }
        if let Some(m) = d.choice(src, "mode", &["auto", "native", "skb"]) {
            h.datapath.mode = match m.v.as_str() {
                "native" => XdpMode::Native,
                "skb" => XdpMode::Skb,
                _ => XdpMode::Auto,
            };
        }
        if let Some(m) = d.choice(src, "zero_copy", &["auto", "on", "off"]) {
            h.datapath.zero_copy = match m.v.as_str() {
                "on" => ZeroCopy::On,
                "off" => ZeroCopy::Off,
                _ => ZeroCopy::Auto,
            };
        }
        if let Some(m) = d.choice(src, "fast_path", &["auto", "on", "off"]) {
            h.datapath.fast_path = match m.v.as_str() {
                "on" => FastPath::On,
                "off" => FastPath::Off,
                _ => FastPath::Auto,
            };
        }
        if let Some(m) = d.choice(src, "napi_threads", &["yield", "leave"]) {
            h.datapath.napi_threads = if m.v == "leave" { NapiThreads::Leave } else { NapiThreads::Yield };
        }
        if let Some(m) = d.choice(src, "core_idle", &["auto", "poll", "leave"]) {
            h.datapath.core_idle = match m.v.as_str() {
                "poll" => CoreIdle::Poll,
                "leave" => CoreIdle::Leave,
                _ => CoreIdle::Auto,
            };
        }
        if let Some(b) = d.boolean(src, "busy_poll") {
            h.datapath.busy_poll = b;
        }
        if let Some(m) = d.choice(src, "prefer_busy_poll", &["auto", "on", "off"]) {
            h.datapath.prefer_busy_poll = match m.v.as_str() {
                "on" => PreferBusyPoll::On,
                "off" => PreferBusyPoll::Off,
                _ => PreferBusyPoll::Auto,
            };
        }
        if let Some(n) = d.u32_in(src, "busy_poll_budget", 1, 1024) {
            h.datapath.busy_poll_budget = n;
        }
        if let Some(n) = d.u32_in(src, "gro_flush_timeout_us", 1, 100_000) {
            h.datapath.gro_flush_timeout_us = n;
        }
        if let Some(n) = d.u32_in(src, "napi_defer_hard_irqs", 1, 1000) {
            h.datapath.napi_defer_hard_irqs = n;
        }
        if let Some(n) = d.u32_in(src, "idle_spin_us", 0, 1_000_000) {
            h.datapath.idle_spin_us = n;
        }
        for (key, lo, hi) in [("frames", 512, 1 << 18), ("ring_size", 64, 1 << 15)] {
            if let Some(n) = d.u32_in(src, key, lo, hi) {
                if n.is_power_of_two() {
                    *(if key == "frames" { &mut h.datapath.frames } else { &mut h.datapath.ring_size }) = n;
                } else if let Some(at) = d.integer(src, key) {
                    src.error(&at.span, format!("`{key}` = {n} must be a power of two"));
                }
            }
        }
    }
    if let Some(m) = t.table(src, "metrics") {
        m.only_keys(src, &["listen"]);
        if let Some(l) = m.string(src, "listen") {
            match l.v.parse::<SocketAddr>() {
                Ok(a) => h.metrics_listen = a,
                Err(_) => src.error(&l.span, format!("`listen` = \"{}\" is not an address:port such as \"127.0.0.1:9469\"", l.v)),
            }
        }
    }
    if let Some(c) = t.table(src, "control") {
        c.only_keys(src, &["socket"]);
        if let Some(p) = c.string(src, "socket") {
            if p.v.is_empty() || p.v.len() > 107 {
                src.error(&p.span, format!("`socket` = \"{}\" must be a path of 1 to 107 bytes (a Unix socket address)", p.v));
            } else {
                h.control_socket = PathBuf::from(&p.v);
            }
        }
    }
    if let Some(f) = t.table(src, "flow_log") {
        f.only_keys(src, &["enabled", "path", "rate", "burst", "sample", "repeat_after"]);
        let fl = &mut h.flow_log;
        fl.enabled = f.boolean(src, "enabled").unwrap_or(fl.enabled);
        if let Some(p) = f.string(src, "path") {
            fl.to = match p.v.as_str() {
                "" => {
                    src.error(&p.span, "`path` must be \"stderr\" or a file path");
                    FlowLogTo::Stderr
                }
                "stderr" => FlowLogTo::Stderr,
                path => FlowLogTo::File(PathBuf::from(path)),
            };
        }
        fl.rate = f.u32_in(src, "rate", 1, 1_000_000).unwrap_or(fl.rate);
        fl.burst = f.u32_in(src, "burst", 1, 1_000_000).unwrap_or(fl.burst);
        fl.sample = f.u32_in(src, "sample", 1, 1_000_000).unwrap_or(fl.sample);
        fl.repeat_after = f.u32_in(src, "repeat_after", 0, 86_400).unwrap_or(fl.repeat_after);
    }
    if let Some(c) = t.table(src, "conntrack") {
        c.only_keys(src, &["capacity", "per_port_capacity", "tcp_strict", "timeouts"]);
        let ct = &mut h.conntrack;
        ct.capacity = c.u32_in(src, "capacity", 1, 1 << 28).unwrap_or(ct.capacity);
        ct.per_port_capacity = c.u32_in(src, "per_port_capacity", 1, 1 << 28).unwrap_or(ct.per_port_capacity);
        ct.tcp_strict = c.boolean(src, "tcp_strict").unwrap_or(ct.tcp_strict);
        if ct.per_port_capacity > ct.capacity {
            src.error(&c.span, format!("per_port_capacity {} is above capacity {}", ct.per_port_capacity, ct.capacity));
        }
        if let Some(tt) = c.table(src, "timeouts") {
            ct.timeouts = parse_timeouts(src, &tt, ct.timeouts);
        }
    }
    if let Some(r) = t.table(src, "reload") {
        r.only_keys(src, &["watch", "debounce_ms"]);
        h.reload.watch = r.boolean(src, "watch").unwrap_or(h.reload.watch);
        h.reload.debounce_ms = r.u32_in(src, "debounce_ms", 50, 60_000).unwrap_or(h.reload.debounce_ms);
    }
    if let Some(l) = t.table(src, "limits") {
        l.only_keys(
            src,
            &[
                "rules_per_group",
                "groups_per_port",
                "rules_per_port",
                "group_refs_per_group",
                "members_per_group",
                "max_priority",
                "max_file_bytes",
            ],
        );
        let lim = &mut h.limits;
        lim.rules_per_group = l.u32_in(src, "rules_per_group", 1, 1_000_000).unwrap_or(lim.rules_per_group);
        lim.groups_per_port = l.u32_in(src, "groups_per_port", 1, 1000).unwrap_or(lim.groups_per_port);
        lim.rules_per_port = l.u32_in(src, "rules_per_port", 1, 1_000_000).unwrap_or(lim.rules_per_port);
        lim.group_refs_per_group = l.u32_in(src, "group_refs_per_group", 0, 1_000_000).unwrap_or(lim.group_refs_per_group);
        lim.members_per_group = l.u32_in(src, "members_per_group", 1, 10_000_000).unwrap_or(lim.members_per_group);
        lim.max_priority = l.u32_in(src, "max_priority", 1, 255).unwrap_or(lim.max_priority);
        lim.max_file_bytes = l.u32_in(src, "max_file_bytes", 1024, 1 << 30).map_or(lim.max_file_bytes, u64::from);
    }
    h
}

/// Reads a `[conntrack.timeouts]`-shaped table over `base`.
pub(crate) fn parse_timeouts(src: &mut Source<'_>, t: &Table<'_, '_>, base: Timeouts) -> Timeouts {
    t.only_keys(src, &["tcp_syn", "tcp_established", "tcp_closing", "udp", "udp_stream", "icmp", "other"]);
    let mut o = base;
    let day = 86_400 * 7;
    o.tcp_syn = t.u32_in(src, "tcp_syn", 1, day).unwrap_or(o.tcp_syn);
    o.tcp_established = t.u32_in(src, "tcp_established", 1, day).unwrap_or(o.tcp_established);
    o.tcp_closing = t.u32_in(src, "tcp_closing", 1, day).unwrap_or(o.tcp_closing);
    o.udp = t.u32_in(src, "udp", 1, day).unwrap_or(o.udp);
    o.udp_stream = t.u32_in(src, "udp_stream", 1, day).unwrap_or(o.udp_stream);
    o.icmp = t.u32_in(src, "icmp", 1, day).unwrap_or(o.icmp);
    o.other = t.u32_in(src, "other", 1, day).unwrap_or(o.other);
    o
}

/// `"tcp/25"` or `"udp/6000-6100"`.
fn parse_blocked(src: &mut Source<'_>, s: &At<String>) -> Option<BlockedPort> {
    let bad = |src: &mut Source<'_>| {
        src.error(&s.span, format!("blocked_egress entry \"{}\" must be \"tcp/<port>\", \"udp/<port>\" or \"tcp/<start>-<end>\"", s.v));
    };
    let Some((proto, ports)) = s.v.split_once('/') else {
        bad(src);
        return None;
    };
    let protocol = match proto {
        "tcp" => TCP,
        "udp" => UDP,
        _ => {
            bad(src);
            return None;
        }
    };
    let (a, b) = ports.split_once('-').unwrap_or((ports, ports));
    match (a.parse::<u16>(), b.parse::<u16>()) {
        (Ok(start), Ok(end)) if start >= 1 && start <= end => Some(BlockedPort { protocol, ports: PortRange { start, end } }),
        _ => {
            bad(src);
            None
        }
    }
}

fn interface_name(src: &mut Source<'_>, t: &Table<'_, '_>) -> Option<String> {
    let s = t.string(src, "interface")?;
    // Linux interface names: 1..15 bytes, printable, no '/', ':' or
    // whitespace (the kernel refuses the rest; a NUL would cut the name).
    if s.v.is_empty() || s.v.len() > 15 || !s.v.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':') {
        src.error(&s.span, format!("interface \"{}\" is not a Linux interface name (1 to 15 characters, no '/', ':' or spaces)", s.v));
        return None;
    }
    Some(s.v)
}

// ---------------------------------------------------------------- addresses

/// Parses an address (a host route) or a CIDR whose host bits are zero.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(a) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(a));
    }
    match s.parse::<IpNet>() {
        Ok(n) if n.trunc() == n => Ok(n),
        Ok(n) => Err(format!("\"{s}\" has bits set after the prefix length; did you mean \"{}\"?", n.trunc())),
        Err(_) => Err(format!("\"{s}\" is not an IP address or CIDR (such as \"10.0.0.0/8\" or \"2001:db8::/32\")")),
    }
}

fn cidr_at(src: &mut Source<'_>, s: &At<String>, key: &str) -> Option<IpNet> {
    match parse_cidr(&s.v) {
        Ok(n) => Some(n),
        Err(e) => {
            src.error(&s.span, format!("bad CIDR in `{key}`: {e}"));
            None
        }
    }
}

fn parse_mac(s: &str) -> Option<Mac> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(Mac(out))
}

// ---------------------------------------------------------------- ports

fn parse_port(src: &mut Source<'_>, t: &Table<'_, '_>, path: &Path, host: &Host) -> Option<Port> {
    t.only_keys(
        src,
        &[
            "id",
            "kind",
            "interface",
            "socket",
            "socket_mode",
            "mac",
            "ipv4",
            "ipv6",
            "security_groups",
            "spoof_check",
            "link_local",
            "allow_blocked_egress",
            "conntrack",
        ],
    );
    let id = read_id(src, t, "", "port");
    if let Some(id) = id.as_ref().filter(|id| id.v.starts_with("sg-") || id.v.starts_with("pl-")) {
        src.error(&id.span, format!("port id \"{}\" must not start with \"sg-\" or \"pl-\", which name groups and prefix lists", id.v));
    }
    let interface = interface_name(src, t);
    let vhost_user = port_kind(src, t);
    let mac = t.string(src, "mac").and_then(|m| match parse_mac(&m.v) {
        Some(mac) if mac.0[0] & 1 == 1 => {
            src.error(&m.span, format!("mac \"{}\" is a multicast address; a port needs a unicast MAC", m.v));
            None
        }
        Some(mac) if mac.0 == [0; 6] => {
            src.error(&m.span, "mac 00:00:00:00:00:00 is not a usable address");
            None
        }
        Some(mac) => Some(mac),
        None => {
            src.error(&m.span, format!("mac \"{}\" is not a MAC address such as \"02:00:00:00:00:01\"", m.v));
            None
        }
    });
    let mut family = |key: &str, v4: bool| -> Vec<IpNet> {
        let Some(list) = t.strings(src, key) else { return Vec::new() };
        let mut out = Vec::new();
        for s in &list {
            let Some(n) = cidr_at(src, s, key) else { continue };
            if matches!(n, IpNet::V4(_)) != v4 {
                let want = if v4 { "IPv4" } else { "IPv6" };
                src.error(&s.span, format!("\"{}\" in `{key}` is not an {want} address", s.v));
            } else if out.iter().any(|o: &IpNet| o.contains(&n) || n.contains(o)) {
                src.error(&s.span, format!("\"{}\" in `{key}` overlaps another address of this port", s.v));
            } else {
                out.push(n);
            }
        }
        out
    };
    let ipv4 = family("ipv4", true);
    let ipv6 = family("ipv6", false);
    let mut security_groups: Vec<IdRef> = Vec::new();
    if !t.has("security_groups") {
        src.error(&t.span, "missing `security_groups`: a port is bound to 1 or more security groups, in order");
    }
    if let Some(list) = t.strings(src, "security_groups") {
        if list.is_empty() {
            src.error(&t.span, "`security_groups` is empty: a port is bound to at least one security group");
        }
        for s in &list {
            if security_groups.iter().any(|g| g.id == s.v) {
                src.error(&s.span, format!("security group \"{}\" is listed twice", s.v));
                continue;
            }
            security_groups.push(IdRef { id: s.v.clone(), loc: src.loc(s.span.start) });
        }
        let lim = host.limits.groups_per_port;
        if list.len() > lim as usize {
            src.error(&list[lim as usize].span, format!("port has {} security groups, over the limit groups_per_port = {lim}", list.len()));
        }
    }
    let spoof_check = t.boolean(src, "spoof_check").unwrap_or(true);
    let mut link_local: Vec<std::net::Ipv6Addr> = Vec::new();
    for s in t.strings(src, "link_local").unwrap_or_default() {
        match s.v.parse::<std::net::Ipv6Addr>() {
            Ok(a) if a.segments()[0] & 0xffc0 == 0xfe80 => {
                if link_local.contains(&a) {
                    src.error(&s.span, format!("link-local address {a} is listed twice"));
                } else {
                    link_local.push(a);
                }
            }
            Ok(a) => src.error(&s.span, format!("\"{a}\" in `link_local` is not an IPv6 link-local address (fe80::/10)")),
            Err(_) => src.error(&s.span, format!("\"{}\" in `link_local` is not an IPv6 address such as \"fe80::1\"", s.v)),
        }
    }
    let allow_blocked_egress = t.boolean(src, "allow_blocked_egress").unwrap_or(false);
    let mut conntrack_timeouts = None;
    if let Some(c) = t.table(src, "conntrack") {
        c.only_keys(src, &["timeouts"]);
        if let Some(tt) = c.table(src, "timeouts") {
            conntrack_timeouts = Some(parse_timeouts(src, &tt, host.conntrack.timeouts));
        }
    }
    if mac.is_none() && !t.has("mac") {
        src.warn(&t.span, "port has no `mac`: it can be checked and traced, but the datapath needs one to forward and spoof-check");
    }
    if interface.is_none() && !t.has("interface") && !t.has("socket") {
        src.warn(&t.span, "port has no `interface`: `sgswitch run` needs the host-side interface of the VM NIC");
    }
    Some(Port {
        id: id?.v,
        file: path.to_path_buf(),
        interface,
        vhost_user,
        mac,
        ipv4,
        ipv6,
        security_groups,
        spoof_check,
        link_local,
        allow_blocked_egress,
        conntrack_timeouts,
    })
}

/// `kind`, `socket` and `socket_mode`: a tap port (the default) has an
/// interface and no socket; a vhost-user port a socket and no interface.
fn port_kind(src: &mut Source<'_>, t: &Table<'_, '_>) -> Option<VhostUser> {
    let vhost = match t.string(src, "kind") {
        None => false,
        Some(k) if k.v == "tap" => false,
        Some(k) if k.v == "vhost-user" => true,
        Some(k) => {
            src.error(&k.span, format!("kind \"{}\" is not a port kind: \"tap\" (the default) or \"vhost-user\"", k.v));
            return None;
        }
    };
    let socket = t.string(src, "socket");
    let mode = t.string(src, "socket_mode");
    if !vhost {
        for s in [&socket, &mode].into_iter().flatten() {
            src.error(&s.span, "`socket` and `socket_mode` are for vhost-user ports (`kind = \"vhost-user\"`)");
        }
        return None;
    }
    if let Some(i) = t.string(src, "interface") {
        src.error(&i.span, "a vhost-user port has no `interface`: the guest's device reaches the switch on its `socket`");
    }
    let client = match &mode {
        None => false,
        Some(m) if m.v == "server" => false,
        Some(m) if m.v == "client" => true,
        Some(m) => {
            src.error(
                &m.span,
                format!("socket_mode \"{}\" is not \"server\" (the switch listens) or \"client\" (the switch connects)", m.v),
            );
            false
        }
    };
    let Some(socket) = socket else {
        src.error(&t.span, "a vhost-user port needs `socket`, the path of its unix socket");
        return None;
    };
    if !Path::new(&socket.v).is_absolute() || socket.v.len() > 107 {
        src.error(&socket.span, format!("socket \"{}\" must be an absolute path of at most 107 bytes (a unix socket's limit)", socket.v));
        return None;
    }
    Some(VhostUser { socket: PathBuf::from(socket.v), client })
}

// ---------------------------------------------------------------- groups

fn parse_group(src: &mut Source<'_>, t: &Table<'_, '_>, path: &Path, host: &Host) -> Option<Group> {
    t.only_keys(src, &["id", "name", "description", "type", "intra_group", "remote_members", "ingress", "egress"]);
    let id = read_id(src, t, "sg-", "security group");
    let name = t.string(src, "name").map(|s| s.v);
    let description = t.string(src, "description").map_or_else(String::new, |s| s.v);
    let kind = match t.choice(src, "type", &["basic", "enterprise"]) {
        Some(k) if k.v == "enterprise" => GroupType::Enterprise,
        _ => GroupType::Basic,
    };
    let intra = t.choice(src, "intra_group", &["accept", "drop"]);
    let intra_group = match (&intra, kind) {
        (Some(a), GroupType::Enterprise) if a.v == "accept" => {
            src.error(&a.span, "enterprise groups have no intra-group allow: `intra_group` is fixed to \"drop\"");
            IntraGroup::Drop
        }
        (_, GroupType::Enterprise) => IntraGroup::Drop,
        (Some(a), GroupType::Basic) if a.v == "drop" => IntraGroup::Drop,
        _ => IntraGroup::Accept,
    };
    if let Some(a) = &intra {
        if host.policy_model != PolicyModel::Priority && kind == GroupType::Basic && a.v == "accept" {
            src.warn(
                &a.span,
                format!("intra_group = \"accept\" has no effect under policy_model = \"{}\": only the priority model allows same-group traffic implicitly", host.policy_model.as_str()),
            );
        }
    }
    let mut remote_members = Vec::new();
    if let Some(list) = t.strings(src, "remote_members") {
        remote_members = list.iter().filter_map(|s| cidr_at(src, s, "remote_members")).collect();
        if kind == GroupType::Enterprise && !list.is_empty() {
            src.warn(&list[0].span, "remote_members of an enterprise group have no effect: enterprise groups cannot be referenced");
        }
    }
    let mut ingress = Vec::new();
    let mut egress = Vec::new();
    for d in Direction::ALL {
        let key = d.as_str();
        let out = if d == Direction::Ingress { &mut ingress } else { &mut egress };
        for rt in t.tables(src, key, &format!("an [[{key}]] rule")) {
            if let Some(r) = parse_rule(src, &rt, d, kind, host) {
                out.push(r);
            }
        }
    }
    let mut named: HashMap<&str, &Rule> = HashMap::new();
    for r in ingress.iter().chain(&egress) {
        let Some(rid) = r.id.as_deref() else { continue };
        if let Some(first) = named.insert(rid, r) {
            src.error_at(
                r.loc,
                format!("rule id \"{rid}\" is already the id of the rule at line {}: rule ids are unique in a group", first.loc.line),
            );
        }
    }
    let refs = ingress.iter().chain(&egress).filter(|r| matches!(r.remote, Remote::Group(_)));
    let lim = host.limits.group_refs_per_group;
    if let Some(r) = refs.clone().nth(lim as usize) {
        src.error_at(
            r.remote_loc,
            format!("group has {} rules that reference a group, over the limit group_refs_per_group = {lim}", refs.count()),
        );
    }
    let id = id?.v;
    Some(Group {
        name: name.unwrap_or_else(|| id.clone()),
        id,
        file: path.to_path_buf(),
        description,
        kind,
        intra_group,
        remote_members,
        ingress,
        egress,
    })
}

/// Why `id` cannot name a rule, if it cannot: 1 to 64 letters, digits and
/// `.`, `_`, `-`, `:`, not all digits (a number names a rule by position).
fn rule_id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() || id.len() > 64 {
        Some("a rule id is 1 to 64 characters")
    } else if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':')) {
        Some("a rule id is made of letters, digits, '.', '_', '-' and ':'")
    } else if id.bytes().all(|b| b.is_ascii_digit()) {
        Some("a rule id may not be a number: numbers name rules by their position")
    } else {
        None
    }
}

/// `"start/end"`, `"-1/-1"` (every port: `None`) or a single `"80"`.
fn parse_port_range(s: &str) -> Result<Option<PortRange>, String> {
    if s == "-1/-1" || s == "-1" {
        return Ok(None);
    }
    let (a, b) = s.split_once('/').unwrap_or((s, s));
    let (Ok(start), Ok(end)) = (a.trim().parse::<i64>(), b.trim().parse::<i64>()) else {
        return Err(format!("port range \"{s}\" must be \"start/end\" (such as \"80/80\" or \"1024/65535\") or \"-1/-1\""));
    };
    if !(1..=65535).contains(&start) || !(1..=65535).contains(&end) {
        return Err(format!("port range {start}/{end}: ports are 1..65535 (\"-1/-1\" means every port)"));
    }
    if start > end {
        return Err(format!("port range {start}/{end}: start is above end"));
    }
    let start = u16::try_from(start).expect("checked to be in 1..=65535");
    let end = u16::try_from(end).expect("checked to be in 1..=65535");
    Ok(Some(PortRange { start, end }))
}

fn parse_rule(src: &mut Source<'_>, t: &Table<'_, '_>, d: Direction, kind: GroupType, host: &Host) -> Option<Rule> {
    t.only_keys(
        src,
        &[
            "id",
            "priority",
            "action",
            "protocol",
            "ports",
            "source",
            "source_ports",
            "destination",
            "icmp_type",
            "icmp_code",
            "description",
        ],
    );
    let errors_before = src.errors.len();
    let id = t.string(src, "id").and_then(|i| match rule_id_problem(&i.v) {
        Some(why) => {
            src.error(&i.span, format!("rule id \"{}\": {why}", i.v));
            None
        }
        None => Some(i.v),
    });
    if id.is_none() && host.lint.require_rule_ids {
        src.warn(&t.span, format!("this {} rule has no `id` ([lint] require_rule_ids = true in host.toml)", d.as_str()));
    }
    let (remote_key, local_key) = match d {
        Direction::Ingress => ("source", "destination"),
        Direction::Egress => ("destination", "source"),
    };
    let max_prio = i64::from(host.limits.max_priority);
    let priority = t.int_in(src, "priority", 1, max_prio).map_or(1, |p| u8::try_from(p.v).unwrap_or(u8::MAX));
    let action_at = t.choice(src, "action", &["allow", "deny"]);
    let action = if action_at.as_ref().is_some_and(|a| a.v == "deny") { Action::Deny } else { Action::Allow };
    if let (Some(a), Action::Deny, PolicyModel::Union) = (&action_at, action, host.policy_model) {
        src.error(&a.span, "deny rules are not allowed under policy_model = \"union\" (host.toml): that model is allow-only");
    }
    let protocol_at =
        t.required_string(src, "protocol", "say which protocol the rule matches: all, tcp, udp, icmp, icmpv6, gre or a number 0..255");
    let protocol = protocol_at.as_ref().and_then(|p| match parse_protocol(&p.v) {
        Some(p) => Some(p),
        None => {
            src.error(&p.span, format!("`protocol` = \"{}\" is not all, tcp, udp, icmp, icmpv6, gre or a protocol number 0..255", p.v));
            None
        }
    });
    let has_ports = matches!(protocol, Some(Some(TCP | UDP)));
    let mut range = |key: &str| -> Option<PortRange> {
        let s = t.string(src, key)?;
        match parse_port_range(&s.v) {
            Ok(None) => None,
            Ok(Some(r)) => {
                if let Some(p) = protocol.filter(|_| !has_ports) {
                    src.error(
                        &s.span,
                        format!(
                            "port range {r} needs protocol tcp or udp; protocol {} has no ports (use \"-1/-1\" or leave `{key}` out)",
                            protocol_name(p)
                        ),
                    );
                }
                Some(r)
            }
            Err(e) => {
                src.error(&s.span, e);
                None
            }
        }
    };
    let ports = range("ports");
    let source_ports = range("source_ports");

    let mut icmp = |key: &str| -> Option<At<u8>> {
        let v = t.int_in(src, key, -1, 255)?;
        if let Some(p) = protocol.filter(|p| !matches!(p, Some(ICMP | ICMPV6))) {
            src.error(&v.span, format!("`{key}` needs protocol icmp or icmpv6, not {}", protocol_name(p)));
        }
        u8::try_from(v.v).ok().map(|n| At { v: n, span: v.span })
    };
    let icmp_type = icmp("icmp_type");
    let icmp_code = icmp("icmp_code");
    if let (None, Some(c)) = (&icmp_type, &icmp_code) {
        src.error(&c.span, "`icmp_code` needs an `icmp_type`: a code means nothing without its type");
    }

    let remote_missing = match d {
        Direction::Ingress => "say where the traffic comes from: a CIDR (\"0.0.0.0/0\" is anywhere), an sg-… group or a pl-… prefix list",
        Direction::Egress => "say where the traffic goes: a CIDR (\"0.0.0.0/0\" is anywhere), an sg-… group or a pl-… prefix list",
    };
    let remote_at = t.required_string(src, remote_key, remote_missing);
    let remote = remote_at.as_ref().and_then(|r| {
        if r.v.starts_with("sg-") {
            if kind == GroupType::Enterprise {
                src.error(
                    &r.span,
                    format!("an enterprise group may not reference another group (\"{}\"); use a CIDR or a prefix list", r.v),
                );
            }
            Some(Remote::Group(r.v.clone()))
        } else if r.v.starts_with("pl-") {
            Some(Remote::PrefixList(r.v.clone()))
        } else {
            cidr_at(src, r, remote_key).map(Remote::Cidr)
        }
    });
    let local = t.string(src, local_key).and_then(|l| {
        if l.v.starts_with("sg-") || l.v.starts_with("pl-") {
            src.error(
                &l.span,
                format!("`{local_key}` of an {} rule is the port's own side: it must be a CIDR, not \"{}\"", d.as_str(), l.v),
            );
            return None;
        }
        cidr_at(src, &l, local_key).map(|n| At { v: n, span: l.span })
    });

    // Families must agree: a rule whose sides (or protocol) are of different
    // IP versions could never match, which is always a mistake.
    let fam = |n: &IpNet| matches!(n, IpNet::V4(_));
    if let (Some(Remote::Cidr(r)), Some(l)) = (&remote, &local) {
        if fam(r) != fam(&l.v) {
            src.error(
                &l.span,
                format!("`{local_key}` {} and `{remote_key}` {r} are of different IP versions: the rule could never match", l.v),
            );
        }
    }
    let mut check_family = |n: &IpNet, span: &std::ops::Range<usize>| match protocol {
        Some(Some(ICMP)) if !fam(n) => src.error(span, format!("protocol icmp is IPv4 only, but {n} is IPv6: use icmpv6")),
        Some(Some(ICMPV6)) if fam(n) => src.error(span, format!("protocol icmpv6 is IPv6 only, but {n} is IPv4: use icmp")),
        _ => {}
    };
    if let (Some(Remote::Cidr(n)), Some(at)) = (&remote, &remote_at) {
        check_family(n, &at.span);
    }
    if let Some(l) = &local {
        check_family(&l.v, &l.span);
    }

    let description = t.string(src, "description").map_or_else(String::new, |s| s.v);
    if src.errors.len() > errors_before {
        return None;
    }
    Some(Rule {
        loc: src.loc(t.span.start),
        id,
        priority,
        action,
        protocol: protocol?,
        ports,
        source_ports,
        remote_loc: src.loc(remote_at?.span.start),
        remote: remote?,
        local: local.map(|l| l.v),
        icmp_type: icmp_type.map(|a| a.v),
        icmp_code: icmp_code.map(|a| a.v),
        description,
    })
}

// ---------------------------------------------------------------- prefix lists

fn parse_prefix_list(src: &mut Source<'_>, t: &Table<'_, '_>, path: &Path) -> Option<PrefixList> {
    t.only_keys(src, &["id", "name", "description", "max_entries", "entries"]);
    let id = read_id(src, t, "pl-", "prefix list");
    if !t.has("max_entries") {
        src.error(&t.span, "missing `max_entries`: a prefix list declares its capacity, which is what a rule referencing it counts for");
    }
    let max_entries = t.u32_in(src, "max_entries", 1, 10_000);
    if !t.has("entries") {
        src.error(&t.span, "missing `entries`: the list of CIDRs");
    }
    let list = t.strings(src, "entries").unwrap_or_default();
    let mut entries: Vec<IpNet> = Vec::new();
    for s in &list {
        if let Some(n) = cidr_at(src, s, "entries") {
            if entries.contains(&n) {
                src.warn(&s.span, format!("{n} is listed twice"));
            } else {
                entries.push(n);
            }
        }
    }
    let max_entries = max_entries?;
    if entries.len() > max_entries as usize {
        src.error(
            &list[max_entries as usize].span,
            format!("prefix list has {} entries, over its max_entries = {max_entries}", entries.len()),
        );
    }
    Some(PrefixList { id: id?.v, file: path.to_path_buf(), max_entries, entries })
}

// ---------------------------------------------------------------- across files

fn err(file: &Path, loc: Loc, msg: String) -> ConfigError {
    ConfigError { file: file.to_path_buf(), line: loc.line, col: loc.col, msg }
}

/// Two files of one kind that declare the same id. Only possible when an id
/// differs from its file name (itself an error), but then the operator
/// needs to know which other file the id collides with.
fn duplicate_ids(seen: &Seen, errors: &mut Vec<ConfigError>) {
    let mut first: HashMap<(&str, &str), &PathBuf> = HashMap::new();
    for (kind, id, path) in &seen.declared {
        if let Some(other) = first.insert((kind, id), path) {
            let (a, b) = if other < path { (other, path) } else { (path, other) };
            errors.push(err(b, Loc { line: 1, col: 1 }, format!("duplicate {kind} id \"{id}\": {} has it too", a.display())));
        }
    }
}

/// Checks that need more than one file: references, group types, limits
/// that add up across files, and ports that claim one address or MAC.
fn cross_check(cfg: &Config, broken: &HashSet<String>, errors: &mut Vec<ConfigError>, warnings: &mut Vec<ConfigError>) {
    let first = Loc { line: 1, col: 1 };
    let groups: HashMap<&str, &Group> = cfg.groups.iter().map(|g| (g.id.as_str(), g)).collect();
    let lists: HashMap<&str, &PrefixList> = cfg.prefix_lists.iter().map(|p| (p.id.as_str(), p)).collect();
    let lim = cfg.host.limits;

    let mut referenced: BTreeMap<&str, bool> = BTreeMap::new();
    for g in &cfg.groups {
        let mut weight = 0u32;
        let mut over_reported = false;
        for (d, r) in g.ingress.iter().map(|r| (Direction::Ingress, r)).chain(g.egress.iter().map(|r| (Direction::Egress, r))) {
            match &r.remote {
                Remote::Group(id) => {
                    referenced.insert(id, true);
                    match groups.get(id.as_str()) {
                        None if broken.contains(id) => {}
                        None => errors.push(err(
                            &g.file,
                            r.remote_loc,
                            format!("{} rule references security group \"{id}\", but there is no groups/{id}.toml", d.as_str()),
                        )),
                        Some(t) if t.kind == GroupType::Enterprise => errors.push(err(
                            &g.file,
                            r.remote_loc,
                            format!("{} rule references \"{id}\", an enterprise group: enterprise groups cannot be referenced", d.as_str()),
                        )),
                        Some(_) => {}
                    }
                }
                Remote::PrefixList(id) => {
                    referenced.insert(id, true);
                    if !lists.contains_key(id.as_str()) && !broken.contains(id) {
                        errors.push(err(
                            &g.file,
                            r.remote_loc,
                            format!("{} rule references prefix list \"{id}\", but there is no prefix-lists/{id}.toml", d.as_str()),
                        ));
                    }
                }
                Remote::Cidr(_) => {}
            }
            weight = weight.saturating_add(cfg.rule_weight(r));
            if weight > lim.rules_per_group && !over_reported {
                over_reported = true;
                let total = cfg.group_weight(g);
                errors.push(err(
                    &g.file,
                    r.loc,
                    format!("group {} counts {total} rules (ingress and egress together; a prefix-list rule counts as its max_entries), over the limit rules_per_group = {}", g.id, lim.rules_per_group),
                ));
            }
        }
    }

    // Ports: group references, one group type per port, rules per port,
    // unique MACs and addresses.
    let mut members: BTreeMap<&str, u64> = BTreeMap::new();
    let mut macs: HashMap<Mac, &Port> = HashMap::new();
    let mut link_locals: HashMap<std::net::Ipv6Addr, &Port> = HashMap::new();
    let mut sockets: HashMap<&Path, &Port> = HashMap::new();
    for p in &cfg.ports {
        let mut kinds = Vec::new();
        let mut rules = 0u32;
        for r in &p.security_groups {
            referenced.insert(&r.id, true);
            match groups.get(r.id.as_str()) {
                None if broken.contains(&r.id) => {}
                None => errors.push(err(
                    &p.file,
                    r.loc,
                    format!("port binds security group \"{}\", but there is no groups/{}.toml", r.id, r.id),
                )),
                Some(g) => {
                    kinds.push((g.kind, r));
                    rules = rules.saturating_add(cfg.group_weight(g));
                    *members.entry(g.id.as_str()).or_default() += (p.ipv4.len() + p.ipv6.len()) as u64;
                }
            }
        }
        if let (Some((k0, _)), Some((_, r))) = (kinds.first(), kinds.iter().find(|(k, _)| k != &kinds[0].0)) {
            errors.push(err(
                &p.file,
                r.loc,
                format!(
                    "port mixes {} and {} security groups (\"{}\"): a port's groups must all be of one type",
                    k0.as_str(),
                    if *k0 == GroupType::Basic { "enterprise" } else { "basic" },
                    r.id
                ),
            ));
        }
        if rules > lim.rules_per_port {
            let loc = p.security_groups.first().map_or(first, |r| r.loc);
            errors.push(err(
                &p.file,
                loc,
                format!("port {} has {rules} rules across its groups, over the limit rules_per_port = {}", p.id, lim.rules_per_port),
            ));
        }
        if let Some(m) = p.mac {
            if let Some(other) = macs.insert(m, p) {
                errors.push(err(&p.file, first, format!("mac {m} is also the mac of port {} ({})", other.id, other.file.display())));
            }
        }
        if let Some(v) = &p.vhost_user
            && let Some(other) = sockets.insert(&v.socket, p)
        {
            errors.push(err(
                &p.file,
                first,
                format!("socket {} is also the socket of port {} ({})", v.socket.display(), other.id, other.file.display()),
            ));
        }
        for a in &p.link_local {
            if let Some(other) = link_locals.insert(*a, p) {
                errors.push(err(
                    &p.file,
                    first,
                    format!("link-local address {a} is also one of port {} ({})", other.id, other.file.display()),
                ));
            }
        }
    }
    overlapping_addresses(&cfg.ports, errors);

    for g in &cfg.groups {
        let n = members.get(g.id.as_str()).copied().unwrap_or(0) + g.remote_members.len() as u64;
        if g.kind == GroupType::Basic && n > u64::from(lim.members_per_group) {
            errors.push(err(
                &g.file,
                first,
                format!(
                    "group {} has {n} members (addresses of its ports plus remote_members), over the limit members_per_group = {}",
                    g.id, lim.members_per_group
                ),
            ));
        }
        if !referenced.contains_key(g.id.as_str()) {
            warnings.push(err(&g.file, first, format!("security group {} is bound to no port and referenced by no rule", g.id)));
        }
    }
    for p in &cfg.prefix_lists {
        if !referenced.contains_key(p.id.as_str()) {
            warnings.push(err(&p.file, first, format!("prefix list {} is referenced by no rule", p.id)));
        }
    }
}

/// Ports whose addresses overlap: an address of a port that overlaps an
/// address of a port before it (by id) is an error on the later port,
/// naming the earliest. The addresses are sorted as intervals: prefixes
/// either nest or lie apart, so the intervals open at any point are a
/// stack, and the check is O(n log n) in the host's addresses (a pairwise
/// check took 1,000 ports a million comparisons per load).
fn overlapping_addresses(ports: &[Port], errors: &mut Vec<ConfigError>) {
    let mut claims: Vec<((u8, u128, u128), IpNet, usize)> =
        ports.iter().enumerate().flat_map(|(i, p)| p.addresses().map(move |n| (crate::fleet::interval(n), *n, i))).collect();
    claims.sort_unstable_by_key(|&((f, start, end), _, i)| (f, start, std::cmp::Reverse(end), i));
    let mut open: Vec<usize> = Vec::new();
    // (later port, its address) -> (earliest other port, its address)
    let mut found: BTreeMap<(usize, IpNet), (usize, IpNet)> = BTreeMap::new();
    for (c, &((f, start, _), net, port)) in claims.iter().enumerate() {
        while open.last().is_some_and(|&o| claims[o].0.0 != f || claims[o].0.2 < start) {
            open.pop();
        }
        for &o in &open {
            let (_, onet, oport) = claims[o];
            if oport == port {
                continue;
            }
            let (later, earlier) = if port > oport { ((port, net), (oport, onet)) } else { ((oport, onet), (port, net)) };
            let e = found.entry(later).or_insert(earlier);
            if earlier.0 < e.0 {
                *e = earlier;
            }
        }
        open.push(c);
    }
    for ((later, n), (earlier, o)) in found {
        let (p, other) = (&ports[later], &ports[earlier]);
        errors.push(err(
            &p.file,
            Loc { line: 1, col: 1 },
            format!("address {n} overlaps {o} of port {} ({})", other.id, other.file.display()),
        ));
    }
}

/// A port's text read on its own, as `ports/<id>.toml` would be under
/// `host`'s limits: the fleet reads other hosts' ports so.
pub(crate) fn parse_port_text(s: &Stored, host: &Host) -> Result<Port, Vec<ConfigError>> {
    let (mut seen, mut errors, mut warnings) = (Seen::default(), Vec::new(), Vec::new());
    let port = read_stored(s, "port", host.limits.max_file_bytes, &mut seen, &mut errors, &mut warnings, |src, t| {
        parse_port(src, t, Path::new(&s.key), host)
    });
    match port {
        Some(p) if errors.is_empty() => Ok(p),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_and_reject_reversed_or_out_of_range() {
        assert_eq!(parse_port_range("-1/-1"), Ok(None));
        assert_eq!(parse_port_range("22/22"), Ok(Some(PortRange { start: 22, end: 22 })));
        assert_eq!(parse_port_range("443"), Ok(Some(PortRange { start: 443, end: 443 })));
        assert_eq!(parse_port_range("200/1"), Err("port range 200/1: start is above end".into()));
        assert!(parse_port_range("0/80").unwrap_err().contains("1..65535"));
        assert!(parse_port_range("http").is_err());
    }

    #[test]
    fn cidrs_accept_hosts_and_reject_host_bits() {
        assert_eq!(parse_cidr("10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
        assert_eq!(parse_cidr("fd00::/8").unwrap().to_string(), "fd00::/8");
        assert!(parse_cidr("10.0.0.1/24").unwrap_err().contains("did you mean \"10.0.0.0/24\""));
        assert!(parse_cidr("10.0.0/8").is_err());
    }

    #[test]
    fn macs_parse_six_hex_pairs() {
        assert_eq!(parse_mac("02:00:00:00:00:0a"), Some(Mac([2, 0, 0, 0, 0, 10])));
        assert_eq!(parse_mac("02:00:00:00:00"), None);
        assert_eq!(parse_mac("02:00:00:00:00:00:01"), None);
        assert_eq!(parse_mac("2:0:0:0:0:1"), None);
    }
}
