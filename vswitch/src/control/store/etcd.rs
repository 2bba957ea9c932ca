//! The etcd side of the store: connecting, following a prefix, publishing
//! this host's ports, pushing and pulling (the `etcd` feature, on by
//! default; a build without it, such as the fuzzers', has no client).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use sgswitch_config::{Config, Store, Stored};
use tracing::{info, warn};

use super::{PushError, Pushed, Snapshot, StoreLink};
use crate::control::unix_ms;

/// Connects to one of the store's endpoints that answers, trying them in
/// turn from a place that differs between processes (so that a fleet
/// spreads over the members). One endpoint per connection: a member that
/// dies ends the session, and the next connection goes to another.
///
/// # Errors
/// The TLS files cannot be read, or no endpoint answers.
pub async fn connect(s: &Store) -> Result<Client, String> {
    let timeout = Duration::from_millis(u64::from(s.timeout_ms));
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout)
        .with_keep_alive(Duration::from_secs(1), timeout)
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    if s.ca_file.is_some() || s.cert_file.is_some() {
        let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("[store] {}: {e}", p.display()));
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &s.ca_file {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        if let (Some(c), Some(k)) = (&s.cert_file, &s.key_file) {
            tls = tls.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?));
        }
        opts = opts.with_tls(tls);
    }
    let n = s.endpoints.len();
    let spread = u64::from(std::process::id()).wrapping_add(unix_ms(SystemTime::now()));
    let start = usize::try_from(spread % n.max(1) as u64).unwrap_or(0);
    let mut errors = Vec::new();
    for i in 0..n {
        let ep = &s.endpoints[(start + i) % n];
        let attempt = async {
            let mut c = Client::connect([ep.as_str()], Some(opts.clone())).await?;
            // A member that answers and has a leader.
            c.get("\0", Some(GetOptions::new().with_keys_only().with_limit(1))).await?;
            Ok::<_, etcd_client::Error>(c)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(e)) => errors.push(format!("{ep}: {e}")),
            Err(_) => errors.push(format!("{ep}: no answer within {} ms", s.timeout_ms)),
        }
    }
    Err(format!("no etcd endpoint answers ({})", errors.join("; ")))
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// Keys per read: a page of 1,000 published ports is about 200 KB, well
/// under gRPC's 4 MiB message limit that one read of a large fleet's
/// prefix would pass.
const PAGE: i64 = 1000;

/// Everything under the prefix, as of one revision (read in pages, each
/// at the revision of the first).
///
/// # Errors
/// etcd's.
pub async fn read_all(client: &mut Client, prefix: &str) -> Result<Snapshot, String> {
    let mut snap = Snapshot::new(prefix);
    let start = format!("{prefix}/");
    // The end of the prefix's range: the prefix with its last byte + 1.
    let mut end = start.clone().into_bytes();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let mut from = start.clone().into_bytes();
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if snap.revision > 0 {
            opts = opts.with_revision(snap.revision);
        }
        let r = client.get(from.clone(), Some(opts)).await.map_err(|e| format!("reading {start}: {e}"))?;
        if snap.revision == 0 {
            snap.revision = r.header().map_or(0, etcd_client::ResponseHeader::revision);
        }
        for kv in r.kvs() {
            snap.set(&text(kv.key()), Some(text(kv.value())));
        }
        match r.kvs().last() {
            Some(kv) if r.more() => {
                from = kv.key().to_vec();
                from.push(0);
            }
            _ => return Ok(snap),
        }
    }
}

/// How a session with the store ended.
enum Ended {
    Stopped,
    /// The watched revision was compacted away: read everything again.
    Compacted(i64),
}

/// The store thread: keeps `link`'s snapshot current, tells `changes` of
/// each new revision, publishes this host's ports; until `stop`.
pub fn serve(link: &Arc<StoreLink>, changes: &dyn Fn(i64), stop: &AtomicBool) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            warn!("store: cannot start its runtime ({e}); the configuration in force stays");
            return;
        }
    };
    rt.block_on(async {
        let mut snap: Option<Snapshot> = None;
        let mut lease: Option<i64> = None;
        let mut pause = Duration::from_millis(200);
        let mut said = String::new();
        while !stop.load(Ordering::Relaxed) {
            match session(link, &mut snap, &mut lease, changes, stop).await {
                Ok(Ended::Stopped) => break,
                Ok(Ended::Compacted(at)) => {
                    info!("store: revision {at} was compacted away; reading the whole prefix again");
                    snap = None;
                }
                Err(e) => {
                    link.status.connected(false, &e);
                    if e != said {
                        warn!("store unreachable, the configuration in force stays (retrying): {e}");
                        said = e;
                    }
                    let until = Instant::now() + pause;
                    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    pause = (pause * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
            pause = Duration::from_millis(200);
            said.clear();
        }
    });
}

/// Hands a new snapshot to the control plane.
fn deliver(link: &StoreLink, snap: &Snapshot, changes: &dyn Fn(i64)) {
    link.status.revision_seen.store(snap.revision, Ordering::Relaxed);
    *link.snapshot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(snap.clone()));
    changes(snap.revision);
}

/// One connection's life: catch up, publish, watch, keep the lease alive.
async fn session(
    link: &StoreLink,
    snap: &mut Option<Snapshot>,
    lease: &mut Option<i64>,
    changes: &dyn Fn(i64),
    stop: &AtomicBool,
) -> Result<Ended, String> {
    let s = &link.settings;
    let mut client = connect(s).await?;
    let prefix = s.prefix.clone();
    if snap.is_none() {
        let all = read_all(&mut client, &prefix).await?;
        deliver(link, &all, changes);
        *snap = Some(all);
    }
    let from = snap.as_ref().map_or(0, |s| s.revision) + 1;
    let opts = WatchOptions::new().with_prefix().with_start_revision(from).with_progress_notify();
    let mut stream = client.watch(format!("{prefix}/"), Some(opts)).await.map_err(|e| format!("watching {prefix}/: {e}"))?;

    // A fresh lease per session: the old one may have run out while the
    // store was away. Its keys are put again under the new one, then the
    // old one is let go.
    let ttl = i64::from(s.lease_ttl_seconds);
    let granted = client.lease_grant(ttl, None).await.map_err(|e| format!("lease: {e}"))?.id();
    let (mut keeper, mut alive) = client.lease_keep_alive(granted).await.map_err(|e| format!("lease keep-alive: {e}"))?;
    let old = lease.replace(granted);
    let mut local = link.local.subscribe();
    let mut published: BTreeMap<String, String> = BTreeMap::new();
    let mine = local.borrow_and_update().clone();
    if let Some(ports) = mine {
        publish(&mut client, link, granted, &ports, &mut published, snap.as_ref(), true).await?;
    }
    if let Some(old) = old {
        let _ = client.lease_revoke(old).await;
    }
    link.status.connected(true, "");
    info!("store: connected to {} at revision {}", s.endpoints.join(", "), from - 1);

    let beat = Duration::from_millis(u64::from(s.lease_ttl_seconds) * 1000 / 3);
    let mut next_beat = Instant::now();
    let mut answered = Instant::now();
    let quiet = Duration::from_millis(u64::from(s.timeout_ms)) + beat;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(Ended::Stopped);
        }
        if Instant::now() >= next_beat {
            keeper.keep_alive().await.map_err(|e| format!("lease keep-alive: {e}"))?;
            next_beat = Instant::now() + beat;
        }
        if answered.elapsed() > quiet + beat {
            return Err(format!("no answer from etcd for {} ms", answered.elapsed().as_millis()));
        }
        tokio::select! {
            m = stream.message() => {
                let m = m.map_err(|e| format!("watch: {e}"))?;
                let Some(resp) = m else { return Err("the watch ended".into()) };
                if resp.compact_revision() > 0 {
                    return Ok(Ended::Compacted(resp.compact_revision()));
                }
                if resp.canceled() {
                    return Err(format!("the watch was cancelled: {}", resp.cancel_reason()));
                }
                let Some(cur) = snap.as_mut() else { return Err("no snapshot".into()) };
                let changed = resp.events().iter().filter_map(|e| {
                    let kv = e.kv()?;
                    Some((text(kv.key()), (e.event_type() == EventType::Put).then(|| text(kv.value())), kv.mod_revision()))
                });
                if cur.apply(changed) {
                    deliver(link, cur, changes);
                }
                answered = Instant::now();
            }
            a = alive.message() => {
                match a.map_err(|e| format!("lease keep-alive: {e}"))? {
                    Some(r) if r.ttl() <= 0 => return Err("this host's lease ran out; publishing again".into()),
                    Some(_) => answered = Instant::now(),
                    None => return Err("the lease keep-alive stream ended".into()),
                }
            }
            changed = local.changed() => {
                if changed.is_err() {
                    return Ok(Ended::Stopped);
                }
                let mine = local.borrow_and_update().clone();
                if let Some(ports) = mine {
                    publish(&mut client, link, granted, &ports, &mut published, snap.as_ref(), false).await?;
                }
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// etcd's default `--max-txn-ops` is 128: larger changes go in several
/// transactions.
const TXN_OPS: usize = 100;

/// Puts this host's ports that changed (all with `everything`) under
/// `lease`, and deletes those it no longer has.
async fn publish(
    client: &mut Client,
    link: &StoreLink,
    lease: i64,
    ports: &BTreeMap<String, String>,
    published: &mut BTreeMap<String, String>,
    snap: Option<&Snapshot>,
    everything: bool,
) -> Result<(), String> {
    let s = &link.settings;
    let key = |id: &str| format!("{}/hosts/{}/ports/{id}", s.prefix, s.host);
    let mut ops = Vec::new();
    for (id, t) in ports {
        if everything || published.get(id) != Some(t) {
            ops.push(TxnOp::put(key(id), t.as_bytes(), Some(PutOptions::new().with_lease(lease))));
        }
    }
    // Ports gone: those published in this session, and those the store
    // still holds from before (a restart within the lease).
    let before = snap.map(|sn| sn.ports_of(&s.host)).unwrap_or_default();
    let gone: std::collections::BTreeSet<&String> = published.keys().chain(before.keys()).filter(|id| !ports.contains_key(*id)).collect();
    ops.extend(gone.into_iter().map(|id| TxnOp::delete(key(id), None)));
    for chunk in ops.chunks(TXN_OPS) {
        client.txn(Txn::new().and_then(chunk.to_vec())).await.map_err(|e| format!("publishing this host's ports: {e}"))?;
    }
    if !ops.is_empty() {
        link.status.published.store(ports.len() as u64, Ordering::Relaxed);
        info!("store: published {} port(s) of host {} ({} change(s))", ports.len(), s.host, ops.len());
    }
    published.clone_from(ports);
    Ok(())
}

/// The key that guards pushes: every push replaces it, and a push happens
/// only if it is as that push read it.
fn guard(prefix: &str) -> String {
    format!("{prefix}/pushed")
}

/// A push read and checked, not yet written.
pub struct Prepared {
    client: Client,
    /// The revision read.
    pub read: i64,
    guard_rev: i64,
    ops: Vec<TxnOp>,
    pushed: Pushed,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").field("read", &self.read).field("pushed", &self.pushed).finish_non_exhaustive()
    }
}

/// Writes the groups and prefix lists of `cfg` (a directory that loaded,
/// with its `sources`) to the store in one transaction, guarded by the
/// revision read; removes those the directory no longer has.
///
/// # Errors
/// See [`prepare`] and [`commit`].
pub async fn push(s: &Store, cfg: &Config, sources: &[(String, String)]) -> Result<Pushed, PushError> {
    commit(s, prepare(s, cfg, sources).await?).await
}

/// Reads the store and works out the push of `cfg`'s groups and prefix
/// lists.
///
/// # Errors
/// The store is unreachable, or a host's published port is bound to a
/// group the push would remove.
pub async fn prepare(s: &Store, cfg: &Config, sources: &[(String, String)]) -> Result<Prepared, PushError> {
    let away = |e: String| PushError::Store(format!("the store cannot be reached, nothing was written: {e}"));
    let mut client = connect(s).await.map_err(away)?;
    let now = read_all(&mut client, &s.prefix).await.map_err(away)?;
    let guard_rev = match client.get(guard(&s.prefix), None).await {
        Ok(r) => r.kvs().first().map_or(0, etcd_client::KeyValue::mod_revision),
        Err(e) => return Err(away(e.to_string())),
    };
    let folder = |rel: &str, f: &str| rel.strip_prefix(f).and_then(|r| r.strip_suffix(".toml")).map(str::to_owned);
    let want_groups: BTreeMap<String, String> =
        sources.iter().filter_map(|(rel, t)| folder(rel, "groups/").map(|id| (id, t.clone()))).collect();
    let want_lists: BTreeMap<String, String> =
        sources.iter().filter_map(|(rel, t)| folder(rel, "prefix-lists/").map(|id| (id, t.clone()))).collect();

    // A port some host published must keep its groups.
    // The snapshot read each port when it arrived, under the default
    // limits; under other limits (which decide whether a port reads) it is
    // read again under the directory's.
    let mut lost = Vec::new();
    let default_limits = cfg.host.limits == sgswitch_config::Limits::default();
    for (host, id, text, read) in now.published() {
        let groups: Vec<String> = match &read.read {
            Ok(c) if default_limits => c.groups.clone(),
            Err(_) if default_limits => continue,
            _ => {
                let stored = Stored { key: read.key.clone(), id: id.to_owned(), text: text.to_owned() };
                let Ok(p) = sgswitch_config::parse_remote_port(&stored, &cfg.host) else { continue };
                p.security_groups.into_iter().map(|g| g.id).collect()
            }
        };
        for g in groups.iter().filter(|g| !want_groups.contains_key(*g)) {
            lost.push(format!("{host}/{id} is bound to {g}"));
        }
    }
    if !lost.is_empty() {
        lost.sort();
        let more = if lost.len() > 10 { format!(" (and {} more)", lost.len() - 10) } else { String::new() };
        return Err(PushError::Invalid(format!(
            "refused: this push removes groups that published ports are bound to: {}{more}; nothing was written",
            lost[..lost.len().min(10)].join(", ")
        )));
    }

    let mut ops = Vec::new();
    let mut pushed = Pushed { revision: now.revision, ..Pushed::default() };
    for (folder, want, have) in [("groups", &want_groups, now.groups()), ("prefix-lists", &want_lists, now.prefix_lists())] {
        for (id, t) in want {
            if have.get(id) != Some(t) {
                let k = format!("{}/{folder}/{id}", s.prefix);
                ops.push(TxnOp::put(k.clone(), t.as_bytes(), None));
                pushed.put.push(k);
            }
        }
        for id in have.keys().filter(|id| !want.contains_key(*id)) {
            let k = format!("{}/{folder}/{id}", s.prefix);
            ops.push(TxnOp::delete(k.clone(), None));
            pushed.deleted.push(k);
        }
    }
    Ok(Prepared { client, read: now.revision, guard_rev, ops, pushed })
}

/// Writes a prepared push in one transaction, if the store is still as
/// it was read.
///
/// # Errors
/// The store is unreachable, or changed after it was read (another push).
pub async fn commit(s: &Store, p: Prepared) -> Result<Pushed, PushError> {
    let Prepared { mut client, read, guard_rev, mut ops, mut pushed } = p;
    if ops.is_empty() {
        return Ok(pushed);
    }
    let stamp = format!("{{\"at_ms\":{},\"read_revision\":{read}}}", unix_ms(SystemTime::now()));
    ops.push(TxnOp::put(guard(&s.prefix), stamp, None));
    let when = vec![
        Compare::mod_revision(guard(&s.prefix), CompareOp::Equal, guard_rev),
        Compare::mod_revision(format!("{}/groups/", s.prefix), CompareOp::Less, read + 1).with_prefix(),
        Compare::mod_revision(format!("{}/prefix-lists/", s.prefix), CompareOp::Less, read + 1).with_prefix(),
    ];
    let r = client.txn(Txn::new().when(when).and_then(ops)).await.map_err(|e| {
        let m = e.to_string();
        if m.contains("too many operations") {
            PushError::Store(format!("{m}: this push changes more keys than etcd takes in one transaction; raise etcd's --max-txn-ops"))
        } else {
            PushError::Store(format!("the store cannot be reached; the push may or may not have been written (pull to see): {m}"))
        }
    })?;
    if !r.succeeded() {
        return Err(PushError::Raced { read });
    }
    pushed.revision = r.header().map_or(0, etcd_client::ResponseHeader::revision);
    Ok(pushed)
}

/// The groups and prefix lists in the store, with its revision.
///
/// # Errors
/// The store is unreachable.
pub async fn pull(s: &Store) -> Result<Snapshot, String> {
    let mut client = connect(s).await?;
    read_all(&mut client, &s.prefix).await
}
