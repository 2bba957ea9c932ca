//! The fleet's store: etcd as the source of the groups and prefix lists,
//! and of every host's ports (`docs/fleet.md`).
//!
//! - **Keys**: `<prefix>/groups/<id>` and `<prefix>/prefix-lists/<id>` hold
//!   the TOML of the files (`sgswitch push` writes them);
//!   `<prefix>/hosts/<host>/ports/<id>` holds each host's port files, which
//!   that host publishes under a lease it keeps alive; `<prefix>/pushed`
//!   guards pushes.
//! - **A host** ([`serve`], on its own thread with a one-thread tokio
//!   runtime, as the etcd client is async) reads the prefix once, then
//!   watches it from the revision it has, keeping a [`Snapshot`] of the
//!   keys. Each watch response ends at a revision boundary (etcd never
//!   splits a revision's events), so every snapshot is a state the store
//!   was in. Each new snapshot is handed to the reloader, which loads it
//!   with the directory exactly as a file change is loaded: compiled off
//!   the hot path, swapped in atomically, refused whole if it does not
//!   check.
//! - **Failure**: when etcd cannot be reached the host keeps the policy in
//!   force (it never fails open), says so ([`StoreStatus`]), and tries
//!   again with a growing pause; back, it watches on from its revision, or
//!   reads everything again if etcd compacted that revision away.
//! - **Push** ([`push`]): the groups and prefix lists of a directory that
//!   checks, written in one transaction guarded by the revision read, so
//!   no host sees half a push and two pushes cannot interleave.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

use sgswitch_config::{Config, Conflict, OtherHosts, Overlay, RemotePort, Store, Stored};
use tracing::warn;

use super::unix_ms;

/// What the store holds under the prefix, as of `revision`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub revision: i64,
    prefix: String,
    // Each map is shared between the snapshots that have it unchanged:
    // a new revision that changes a group copies the groups, not the
    // 10,000s of ports.
    groups: Arc<BTreeMap<String, String>>,
    prefix_lists: Arc<BTreeMap<String, String>>,
    /// (host, port id) -> text, and the port as read (once, when it
    /// arrived).
    ports: Arc<Published>,
    /// The other hosts' ports indexed ([`OtherHosts`]), made by the first load
    /// that needs it and shared by every snapshot with the same ports.
    remote: Arc<OnceLock<Arc<OtherHosts>>>,
}

/// The ports hosts published: (host, port id) -> the text, and the port
/// as read.
type Published = BTreeMap<(String, String), (String, Arc<RemotePort>)>;

/// What a key under the prefix is.
#[derive(Debug, PartialEq, Eq)]
enum Key<'a> {
    Group(&'a str),
    PrefixList(&'a str),
    Port { host: &'a str, id: &'a str },
    Other,
}

fn classify<'a>(prefix: &str, key: &'a str) -> Key<'a> {
    let Some(rest) = key.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) else { return Key::Other };
    let single = |s: &'a str| (!s.is_empty() && !s.contains('/')).then_some(s);
    if let Some(id) = rest.strip_prefix("groups/").and_then(single) {
        return Key::Group(id);
    }
    if let Some(id) = rest.strip_prefix("prefix-lists/").and_then(single) {
        return Key::PrefixList(id);
    }
    if let Some((host, id)) = rest.strip_prefix("hosts/").and_then(|r| r.split_once("/ports/")) {
        if let (Some(host), Some(id)) = (single(host), single(id)) {
            return Key::Port { host, id };
        }
    }
    Key::Other
}

impl Snapshot {
    pub fn new(prefix: &str) -> Snapshot {
        Snapshot { prefix: prefix.to_owned(), ..Snapshot::default() }
    }

    /// A key put (`Some`) or deleted (`None`); keys outside the layout are
    /// not kept.
    pub fn set(&mut self, key: &str, value: Option<String>) {
        let prefix = self.prefix.clone();
        let (map, k) = match classify(&prefix, key) {
            Key::Group(id) => return set(Arc::make_mut(&mut self.groups), id.to_owned(), value),
            Key::PrefixList(id) => return set(Arc::make_mut(&mut self.prefix_lists), id.to_owned(), value),
            Key::Port { host, id } => (Arc::make_mut(&mut self.ports), (host.to_owned(), id.to_owned())),
            Key::Other => return,
        };
        self.remote = Arc::default();
        match value {
            Some(text) => {
                let stored = Stored { key: key.to_owned(), id: k.1.clone(), text };
                let read = Arc::new(sgswitch_config::read_remote_port(&k.0, &stored));
                map.insert(k, (stored.text, read));
            }
            None => {
                map.remove(&k);
            }
        }
    }

    /// Applies one watch response's changes: `(key, value or deleted,
    /// the revision of the change)`, in the store's order. The snapshot
    /// then stands at the newest of those revisions, never at the
    /// response's header revision: etcd stamps a watch's `created`
    /// answer, its progress notes and a catching-up batch with the
    /// revision the member is at, which can be ahead of the changes this
    /// host has received. Whether the revision moved.
    pub fn apply(&mut self, changes: impl IntoIterator<Item = (String, Option<String>, i64)>) -> bool {
        let before = self.revision;
        for (key, value, revision) in changes {
            self.set(&key, value);
            self.revision = self.revision.max(revision);
        }
        self.revision > before
    }

    fn key(&self, folder: &str, id: &str) -> String {
        format!("{}/{folder}/{id}", self.prefix)
    }

    /// The texts as the loader takes them, for `host` (whose own ports
    /// come from its directory).
    pub fn overlay(&self, host: &str) -> Overlay {
        let stored = |folder: &str, id: &str, text: &str| Stored { key: self.key(folder, id), id: id.to_owned(), text: text.to_owned() };
        Overlay {
            groups: self.groups.iter().map(|(id, t)| stored("groups", id, t)).collect(),
            prefix_lists: self.prefix_lists.iter().map(|(id, t)| stored("prefix-lists", id, t)).collect(),
            remote: Arc::clone(self.remote.get_or_init(|| {
                Arc::new(OtherHosts::new(self.ports.iter().filter(|((h, _), _)| h != host).map(|(_, (_, r))| Arc::clone(r)).collect()))
            })),
            host: host.to_owned(),
        }
    }

    /// The ports `host` has published: id -> text.
    pub fn ports_of(&self, host: &str) -> BTreeMap<String, String> {
        self.ports.iter().filter(|((h, _), _)| h == host).map(|((_, id), (t, _))| (id.clone(), t.clone())).collect()
    }

    /// Every published port: (host, id, text, the port as read when it
    /// arrived, under the default limits).
    pub fn published(&self) -> impl Iterator<Item = (&str, &str, &str, &RemotePort)> {
        self.ports.iter().map(|((h, id), (t, r))| (h.as_str(), id.as_str(), t.as_str(), &**r))
    }

    /// The hosts that have published ports, with how many each.
    pub fn hosts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (h, _) in self.ports.keys() {
            *out.entry(h.clone()).or_insert(0) += 1;
        }
        out
    }

    pub fn groups(&self) -> &BTreeMap<String, String> {
        &self.groups
    }

    pub fn prefix_lists(&self) -> &BTreeMap<String, String> {
        &self.prefix_lists
    }
}

fn set<K: Ord>(map: &mut BTreeMap<K, String>, k: K, value: Option<String>) {
    match value {
        Some(v) => {
            map.insert(k, v);
        }
        None => {
            map.remove(&k);
        }
    }
}

/// How the host stands with the store: read by `ctl status` and the
/// metrics endpoint.
#[derive(Debug, Default)]
pub struct StoreStatus {
    pub connected: AtomicBool,
    /// Unix ms of the last change of `connected`.
    pub since_ms: AtomicU64,
    /// The newest revision read from the store.
    pub revision_seen: AtomicI64,
    /// Times the connection was lost.
    pub disconnects: AtomicU64,
    /// Store revisions that did not load (the previous one stayed).
    pub refused: AtomicU64,
    /// Ports of this host published.
    pub published: AtomicU64,
    pub detail: Mutex<StoreDetail>,
}

/// The parts of [`StoreStatus`] that are not numbers.
#[derive(Debug, Default, Clone)]
pub struct StoreDetail {
    /// Why the store is unreachable (empty while it is reached).
    pub error: String,
    /// The last revision refused and why.
    pub refused: Option<(i64, String)>,
    /// Addresses two hosts claim, as of the configuration in force.
    pub conflicts: Vec<Conflict>,
    /// Other hosts' ports in the configuration in force.
    pub remote_ports: usize,
}

impl StoreStatus {
    fn connected(&self, yes: bool, error: &str) {
        if self.connected.swap(yes, Ordering::Relaxed) != yes {
            self.since_ms.store(unix_ms(SystemTime::now()), Ordering::Relaxed);
            if !yes {
                self.disconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.detail.lock().unwrap_or_else(PoisonError::into_inner).error = error.to_owned();
    }

    pub fn detail(&self) -> StoreDetail {
        self.detail.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// What the store thread and the control plane share.
#[derive(Debug)]
pub struct StoreLink {
    pub settings: Store,
    pub status: StoreStatus,
    snapshot: Mutex<Option<Arc<Snapshot>>>,
    /// This host's ports (id, text) as the configuration in force has
    /// them; `None` until one is in force. The store thread publishes them.
    local: tokio::sync::watch::Sender<Option<BTreeMap<String, String>>>,
}

impl StoreLink {
    pub fn new(settings: Store) -> Arc<StoreLink> {
        let (local, _) = tokio::sync::watch::channel(None);
        Arc::new(StoreLink { settings, status: StoreStatus::default(), snapshot: Mutex::new(None), local })
    }

    /// The newest snapshot read, if any.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Called with each configuration put in force: its ports are
    /// published, its fleet findings shown.
    pub fn applied(&self, cfg: &Config, sources: &[(String, String)]) {
        let ports: BTreeMap<String, String> = sources
            .iter()
            .filter_map(|(rel, text)| {
                let id = rel.strip_prefix("ports/")?.strip_suffix(".toml")?;
                Some((id.to_owned(), text.clone()))
            })
            .collect();
        self.local.send_if_modified(|cur| {
            let changed = cur.as_ref() != Some(&ports);
            *cur = Some(ports);
            changed
        });
        let mut d = self.status.detail.lock().unwrap_or_else(PoisonError::into_inner);
        let fleet = cfg.fleet.clone().unwrap_or_default();
        for c in fleet.conflicts.iter().filter(|c| !d.conflicts.contains(c)) {
            warn!(
                "store: {} is claimed by {}: it is no group's member until all but one claim are withdrawn",
                c.address,
                c.claims.join(" and ")
            );
        }
        d.conflicts = fleet.conflicts;
        d.remote_ports = fleet.remote_ports;
        d.refused = None;
    }

    /// Called when the configuration at `revision` was refused.
    pub fn refused(&self, revision: i64, why: &str) {
        self.status.refused.fetch_add(1, Ordering::Relaxed);
        self.status.detail.lock().unwrap_or_else(PoisonError::into_inner).refused = Some((revision, why.to_owned()));
    }
}

/// Why `serve` cannot follow a store in a build without etcd.
#[cfg(not(feature = "etcd"))]
pub fn serve(link: &Arc<StoreLink>, _changes: &dyn Fn(i64), _stop: &AtomicBool) {
    link.status.connected(false, WITHOUT_ETCD);
    warn!("[store] is set, but this sgswitch was built without the `etcd` feature; nothing will be enforced");
}

/// `sgswitch push` in a build without etcd.
///
/// # Errors
/// Always: there is no client.
#[cfg(not(feature = "etcd"))]
pub async fn push(_s: &Store, _cfg: &Config, _sources: &[(String, String)]) -> Result<Pushed, PushError> {
    Err(PushError::Store(WITHOUT_ETCD.into()))
}

/// `sgswitch pull` in a build without etcd.
///
/// # Errors
/// Always: there is no client.
#[cfg(not(feature = "etcd"))]
pub async fn pull(_s: &Store) -> Result<Snapshot, String> {
    Err(WITHOUT_ETCD.into())
}

#[cfg(not(feature = "etcd"))]
const WITHOUT_ETCD: &str = "this sgswitch was built without the `etcd` feature: it cannot reach a store";

#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "etcd")]
pub use etcd::{Prepared, commit, connect, prepare, pull, push, read_all, serve};

/// What a push changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// The revision the push was written as (that of the store when
    /// nothing changed).
    pub revision: i64,
    pub put: Vec<String>,
    pub deleted: Vec<String>,
}

/// Why a push did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("{0}")]
    Store(String),
    /// A published port would lose its group.
    #[error("{0}")]
    Invalid(String),
    /// Someone else pushed (or wrote the prefix) since this push read it.
    #[error(
        "refused: the store changed after this push read it at revision {read} (another push?); nothing was written. Pull, merge, push again."
    )]
    Raced { read: i64 },
}

/// Runs `f` on a one-thread runtime: the command line's way to the async
/// client.
///
/// # Errors
/// The runtime cannot start.
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> Result<T, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("starting a runtime: {e}"))?;
    Ok(rt.block_on(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_by_the_layout_and_others_ignored() {
        assert_eq!(classify("/sg", "/sg/groups/sg-web"), Key::Group("sg-web"));
        assert_eq!(classify("/sg", "/sg/prefix-lists/pl-a"), Key::PrefixList("pl-a"));
        assert_eq!(classify("/sg", "/sg/hosts/h1/ports/eni-1"), Key::Port { host: "h1", id: "eni-1" });
        for other in ["/sg/pushed", "/sg/groups/", "/sg/groups/a/b", "/sgx/groups/sg-a", "/other/groups/sg-a", "/sg/hosts/h1/ports/"] {
            assert_eq!(classify("/sg", other), Key::Other, "{other}");
        }
    }

    #[test]
    fn a_snapshot_follows_puts_and_deletes_and_leaves_a_host_its_own_ports() {
        let mut s = Snapshot::new("/sg");
        s.set("/sg/groups/sg-a", Some("id = \"sg-a\"".into()));
        s.set("/sg/hosts/h1/ports/p1", Some("one".into()));
        s.set("/sg/hosts/h2/ports/p2", Some("two".into()));
        s.set("/sg/unrelated", Some("x".into()));
        let o = s.overlay("h1");
        assert_eq!(o.groups.len(), 1);
        assert_eq!(o.groups[0].key, "/sg/groups/sg-a");
        assert_eq!(o.remote.ports.len(), 1);
        assert_eq!(o.remote.ports[0].host, "h2");
        assert_eq!(o.remote.ports[0].key, "/sg/hosts/h2/ports/p2");
        s.set("/sg/hosts/h2/ports/p2", None);
        s.set("/sg/groups/sg-a", None);
        assert!(s.overlay("h1").remote.ports.is_empty());
        assert!(s.groups().is_empty());
        assert_eq!(s.ports_of("h1").len(), 1);
    }

    #[test]
    fn a_snapshot_stands_at_the_revision_of_the_changes_it_holds() {
        let mut s = Snapshot::new("/sg");
        s.revision = 4;
        // A watch's `created` answer or a progress note: no changes, so no
        // new revision, whatever the header says.
        assert!(!s.apply([]));
        assert_eq!(s.revision, 4);
        let v2 = "id = \"sg-a\"\n# v2".to_owned();
        assert!(s.apply([("/sg/groups/sg-a".into(), Some(v2.clone()), 5), ("/sg/hosts/h1/ports/p1".into(), Some("one".into()), 6)]));
        assert_eq!((s.revision, s.groups().get("sg-a")), (6, Some(&v2)));
        // Changes outside the layout still mark the revision they were at.
        assert!(s.apply([("/sg/pushed".into(), Some("{}".into()), 7)]));
        assert_eq!(s.revision, 7);
        // A change the snapshot already holds (a watch started from an
        // older revision) does not move it back.
        assert!(!s.apply([("/sg/hosts/h1/ports/p1".into(), Some("one".into()), 6)]));
        assert_eq!(s.revision, 7);
    }
}
