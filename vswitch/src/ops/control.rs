//! The control socket: a Unix stream socket (mode 0600, `[control] socket`)
//! that `sgswitch ctl` talks to. One JSON request per connection, one JSON
//! answer line: `{"ok":true,"result":…}` or `{"ok":false,"error":"…"}`.
//!
//! Verbs: `status`, `reload`, `conntrack-list` (`port`, `limit`),
//! `conntrack-flush` (`port`), `trace` (`request`: the keys of a `trace
//! --batch` line), `diagnose` (`ask`: `from`, `to`, `proto`, `port`). Requests about connection state go to the poll loop that
//! owns it through a bounded queue; the loop answers between batches, a
//! few requests per iteration, so the control socket never stalls it.
//!
//! # Serving
//! Clients are served at once, on a one-thread tokio runtime: a client has
//! [`READ_TIMEOUT`] to send its request of at most [`MAX_REQUEST`] bytes and
//! [`WRITE_TIMEOUT`] to take the answer, and at most [`MAX_CLIENTS`] are
//! connected (more wait in the listen backlog). Answering runs on a few
//! blocking threads ([`ANSWERING`]) so that a request that waits (a reload,
//! a loop's answer) never holds up the others: `status` reads only atomic
//! counters and the published plan, never a lock a reload holds. A `reload`
//! is done by the switch's reloader thread; the request waits for it at
//! most [`RELOAD_WAIT`] and then says the reload is still running.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sgswitch_config::{Direction, protocol_name};
use sgswitch_conntrack::{State, TcpState, Tuple, Zone};

use super::View;
use super::clients::{Clients, Place};
use crate::engine::LoopRequest;
use crate::tools::request::{Request, decision_value, resolve};

/// Flows `conntrack-list` returns unless asked for another number.
pub const DEFAULT_LIMIT: usize = 1000;
/// Largest request accepted.
pub const MAX_REQUEST: u64 = 64 * 1024;
/// How long a client has to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client has to take its answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients connected at once.
pub const MAX_CLIENTS: usize = 256;
/// Threads that answer requests.
pub const ANSWERING: usize = 4;
/// How long `reload` waits for the reloader.
pub const RELOAD_WAIT: Duration = Duration::from_secs(30);

/// Why a request was refused (the `error` of the answer).
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Reload(#[from] crate::control::ReloadError),
    #[error(transparent)]
    Loop(#[from] crate::engine::AskError),
    #[error("no port \"{0}\" in the running configuration")]
    NoPort(String),
    #[error("{0}")]
    Request(String),
}

/// A request on the control socket.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "kebab-case")]
pub enum CtlRequest {
    Status,
    Reload,
    ConntrackList { port: Option<String>, limit: Option<usize> },
    ConntrackFlush { port: Option<String> },
    Trace { request: Request },
    Diagnose { ask: crate::tools::diagnose::Ask },
}

/// Binds the control socket at `path` with mode 0600. A socket file left by
/// a switch that is gone is replaced; one a running switch answers on is
/// not.
///
/// # Errors
/// Another switch answers there, or the socket cannot be made.
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    let err = |e: &dyn std::fmt::Display| format!("control socket {}: {e}", path.display());
    if let Ok(m) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        // Only a socket left by a switch that is gone is replaced: any other
        // file there is somebody's, and stays.
        if !m.file_type().is_socket() {
            return Err(err(&"exists and is not a socket; it is left alone: remove it or set [control] socket"));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(err(&"another sgswitch is running and answers there; stop it or set [control] socket"));
        }
        std::fs::remove_file(path).map_err(|e| err(&e))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
    }
    let l = UnixListener::bind(path).map_err(|e| err(&e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| err(&e))?;
    l.set_nonblocking(true).map_err(|e| err(&e))?;
    Ok(l)
}

/// Serves the control socket until the switch stops.
pub fn serve(listener: UnixListener, shared: Arc<View>) -> Option<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sgswitch-control".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .max_blocking_threads(ANSWERING)
                .thread_name("sgswitch-control-answer")
                .build();
            match rt {
                Ok(rt) => {
                    rt.block_on(accept_loop(listener, shared));
                    // Answers still being worked out do not hold the stop.
                    rt.shutdown_timeout(Duration::from_millis(500));
                }
                Err(e) => tracing::warn!("control socket: cannot start its runtime ({e}); `sgswitch ctl` is not served"),
            }
        })
        .ok()
}

async fn accept_loop(listener: UnixListener, shared: Arc<View>) {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("control socket: {e}; `sgswitch ctl` is not served");
            return;
        }
    };
    let clients = Clients::new(MAX_CLIENTS);
    while !shared.stop.is_set() {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shared.stop.wait() => break,
        };
        match accepted {
            Ok((conn, _)) => {
                let Some(place) = clients.admit() else { continue };
                let place = Arc::new(place);
                let shared = Arc::clone(&shared);
                let mine = Arc::clone(&place);
                let task = tokio::spawn(async move {
                    let _ = client(conn, shared, &mine).await;
                });
                place.waiting(task.abort_handle());
            }
            // Out of descriptors: wait for clients to leave.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One client: its request line (bounded in size and time), the answer
/// worked out on a blocking thread, written back (bounded in time).
async fn client(conn: tokio::net::UnixStream, shared: Arc<View>, place: &Place) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let (read, mut write) = conn.into_split();
    let mut line = Vec::new();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST));
    let answer = match tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_) => json!({"ok": false, "error": format!("no request within {} s", READ_TIMEOUT.as_secs())}),
        Ok(Err(e)) => json!({"ok": false, "error": format!("reading the request: {e}")}),
        Ok(Ok(_)) if !line.ends_with(b"\n") && line.len() as u64 >= MAX_REQUEST => {
            json!({"ok": false, "error": format!("request over {MAX_REQUEST} bytes")})
        }
        Ok(Ok(_)) => match serde_json::from_slice::<CtlRequest>(&line) {
            Ok(req) => {
                place.asked();
                let shared = Arc::clone(&shared);
                let answered = tokio::task::spawn_blocking(move || answer(&req, &shared)).await;
                match answered {
                    Ok(Ok(result)) => json!({"ok": true, "result": result}),
                    Ok(Err(e)) => json!({"ok": false, "error": e.to_string()}),
                    Err(e) => json!({"ok": false, "error": format!("the request failed: {e}")}),
                }
            }
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
        },
    };
    let text = format!("{answer}\n");
    match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(text.as_bytes())).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

fn answer(req: &CtlRequest, shared: &View) -> Result<Value, CtlError> {
    match req {
        CtlRequest::Status => Ok(status(shared)),
        CtlRequest::Reload => shared
            .control
            .request_reload("ctl reload", RELOAD_WAIT)
            .map(|r| json!({"generation": r.generation, "needs_restart": r.needs_restart}))
            .map_err(CtlError::from),
        CtlRequest::ConntrackList { port, limit } => {
            let zone = zone_of(shared, port.as_deref())?;
            let limit = limit.unwrap_or(DEFAULT_LIMIT);
            let published = shared.control.published.load();
            let mut flows = Vec::new();
            let mut total = 0;
            // Each loop's table in steps: every flow counted, the first
            // `limit` listed.
            let mut rows = Vec::new();
            for i in shared.loops.loops_for(zone) {
                let mut from = 0;
                loop {
                    let want = limit.saturating_sub(rows.len());
                    let step = shared.loops.ask(i, |reply| LoopRequest::Flows { zone, from, limit: want, reply })?;
                    total += step.counted;
                    rows.extend(step.found);
                    if step.next >= step.end {
                        break;
                    }
                    from = step.next;
                }
            }
            {
                for (t, state, c) in rows.into_iter().take(limit) {
                    let port = published.plan.ports.iter().find(|p| p.zone == t.zone).map(|p| p.id.to_string());
                    flows.push(json!({
                        "port": port,
                        "proto": protocol_name(Some(t.proto)),
                        "src": t.src.to_string(),
                        "sport": t.sport,
                        "dst": t.dst.to_string(),
                        "dport": t.dport,
                        "state": state_name(state),
                        "packets": c.packets,
                        "bytes": c.bytes,
                    }));
                }
            }
            Ok(json!({"total": total, "flows": flows}))
        }
        CtlRequest::ConntrackFlush { port } => {
            let zone = zone_of(shared, port.as_deref())?;
            let mut n = 0;
            for i in shared.loops.loops_for(zone) {
                let mut from = 0;
                loop {
                    let step = shared.loops.ask(i, |reply| LoopRequest::Flush { zone, from, reply })?;
                    n += step.counted;
                    if step.next >= step.end {
                        break;
                    }
                    from = step.next;
                }
            }
            Ok(json!({"flushed": n}))
        }
        CtlRequest::Trace { request } => trace(shared, request),
        CtlRequest::Diagnose { ask } => {
            let published = shared.control.published.load();
            let paths = crate::tools::diagnose::diagnose(&published.plan, ask).map_err(CtlError::Request)?;
            Ok(json!({"paths": paths}))
        }
    }
}

/// The zone of a port id; `None` for all ports.
fn zone_of(shared: &View, port: Option<&str>) -> Result<Option<Zone>, CtlError> {
    let Some(id) = port else { return Ok(None) };
    let plan = &shared.control.published.load().plan;
    plan.port_by_id(id).and_then(|i| plan.port(i)).map(|p| Some(p.zone)).ok_or_else(|| CtlError::NoPort(id.to_owned()))
}

fn status(shared: &View) -> Value {
    let published = shared.control.published.load();
    let plan = &published.plan;
    let c = &shared.control.stats;
    let links: Vec<crate::engine::stats::LinkState> =
        shared.loops.stats.iter().flat_map(|l| l.links.load().iter().cloned().collect::<Vec<_>>()).collect();
    let datapath = !shared.loops.stats.is_empty();
    let link = |iface: Option<&str>| {
        let l = iface.and_then(|i| links.iter().find(|l| l.interface == i));
        match l {
            _ if !datapath => ("off", "no datapath (run --no-datapath)".to_owned()),
            Some(l) if l.up => ("up", String::new()),
            Some(l) => ("down", l.reason.clone()),
            None if iface.is_none() => ("down", "the port has no interface".to_owned()),
            None => ("down", "no socket yet".to_owned()),
        }
    };
    let ports: Vec<Value> = plan
        .ports
        .iter()
        .map(|p| {
            let (state, reason) = link(p.interface.as_deref());
            json!({"id": &*p.id, "interface": p.interface, "zone": p.zone, "flows": shared.loops.flows(p.zone), "link": state, "reason": reason})
        })
        .collect();
    let uplink = shared.host.uplink_interface.as_deref();
    let (uplink_state, uplink_reason) = link(uplink);
    let loops: Vec<Value> = shared
        .loops
        .stats
        .iter()
        .map(|l| {
            let sockets: Vec<Value> = l
                .sockets
                .load()
                .iter()
                .map(|s| json!({"interface": s.interface, "queue": s.queue, "mode": if s.native { "native" } else { "skb" }, "zero_copy": s.zero_copy}))
                .collect();
            json!({"index": l.index, "core": l.core, "batches": l.batches.get(), "busy": l.busy.get(), "idle": l.idle.get(), "sockets": sockets})
        })
        .collect();
    let loaded = SystemTime::UNIX_EPOCH + Duration::from_millis(c.loaded_at_ms.load(Ordering::Relaxed));
    let store = shared.control.store.as_ref().map(|l| {
        let st = &l.status;
        let d = st.detail();
        let since = SystemTime::UNIX_EPOCH + Duration::from_millis(st.since_ms.load(Ordering::Relaxed));
        json!({
            "endpoints": l.settings.endpoints,
            "prefix": l.settings.prefix,
            "host": l.settings.host,
            "connected": st.connected.load(Ordering::Relaxed),
            "since": humantime::format_rfc3339_millis(since).to_string(),
            "error": d.error,
            "revision_seen": st.revision_seen.load(Ordering::Relaxed),
            "revision_in_force": c.revision.load(Ordering::Relaxed),
            "refused": d.refused.map(|(r, why)| json!({"revision": r, "why": why})),
            "published_ports": st.published.load(Ordering::Relaxed),
            "remote_ports": d.remote_ports,
            "conflicts": d.conflicts.iter().map(|k| json!({"address": k.address.to_string(), "claims": k.claims})).collect::<Vec<_>>(),
        })
    });
    json!({
        "config": shared.dir.display().to_string(),
        "generation": c.shown(),
        "datapath": datapath,
        "store": store,
        "loaded_at": humantime::format_rfc3339_millis(loaded).to_string(),
        "reloads": {"success": c.reloads_ok.load(Ordering::Relaxed), "failure": c.reloads_failed.load(Ordering::Relaxed)},
        "needs_restart": *c.needs_restart.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        "uptime_seconds": shared.started.elapsed().map_or(0, |d| d.as_secs()),
        "metrics": shared.host.metrics_listen.to_string(),
        "flow_log": !shared.flow_log.is_empty(),
        "uplink": {"interface": uplink, "link": uplink_state, "reason": uplink_reason},
        "reloading": shared.control.reloading(),
        "ports": ports,
        "loops": loops,
    })
}

/// The decision for a packet against the live policy and the live
/// connection state: a flow the table tracks passes as established (unless
/// a reload revoked it); otherwise the rules decide, as `sgswitch trace`.
fn trace(shared: &View, r: &Request) -> Result<Value, CtlError> {
    let published = shared.control.published.load();
    let plan = &published.plan;
    let (port, pkt) = resolve(plan.policy(), r).map_err(CtlError::Request)?;
    let decision = plan.compiled.decide(port, &pkt);
    let policy = decision_value(plan.policy(), &decision);
    // What the datapath does with it as a first packet, when the rules
    // alone do not say (spoofing, infrastructure, blocked egress, the
    // receiver's ingress): a probe pipeline of this thread's, never a loop's.
    let datapath = u16::try_from(port).ok().and_then(|p| {
        let mut probe = crate::tools::probe::pipeline(plan);
        crate::tools::probe::datapath(&mut probe, plan, p, &pkt, &decision)
    });

    let zone = plan.ports.get(port).map(|p| p.zone).ok_or_else(|| CtlError::Request("the port has no zone".into()))?;
    let (src, dst, sport, dport) = match pkt.direction {
        Direction::Ingress => (pkt.remote, pkt.local, pkt.remote_port, pkt.local_port),
        Direction::Egress => (pkt.local, pkt.remote, pkt.local_port, pkt.remote_port),
    };
    let tuple = Tuple { zone, proto: pkt.proto, src, dst, sport, dport };
    let mut entry = None;
    for i in shared.loops.loops_for(Some(zone)) {
        if let Some(e) = shared.loops.ask(i, |reply| LoopRequest::Lookup { tuple, reply })? {
            entry = Some(e);
        }
    }
    let conntrack = entry.map(|(state, c)| json!({"state": state_name(state), "packets": c.packets, "bytes": c.bytes}));
    // A revoked flow drops its packets; a closed one takes only a new SYN.
    let established = entry.is_some_and(|(s, _)| !matches!(s, State::Revoked | State::Tcp(TcpState::Close)));
    let mut v = if established {
        json!({"verdict": "allow", "by": "established", "rule": null, "conntrack": conntrack, "policy": policy})
    } else {
        let mut v = policy.clone();
        v["conntrack"] = conntrack.unwrap_or(Value::Null);
        v["policy"] = policy;
        v
    };
    if let Some(dp) = datapath.filter(|_| !established) {
        v["datapath"] = dp.json(plan);
    }
    Ok(v)
}

pub fn state_name(s: State) -> &'static str {
    match s {
        State::Tcp(t) => match t {
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
        },
        State::Pseudo { replied: false } => "UNREPLIED",
        State::Pseudo { replied: true } => "REPLIED",
        State::Revoked => "REVOKED",
    }
}

/// Why a `ctl` call failed.
#[derive(Debug)]
pub enum CallError {
    /// The switch could not be reached (exit 2).
    Unreachable(String),
    /// The switch refused the request (exit 1).
    Refused(String),
}

/// Sends one request to the switch at `path` and returns its result.
///
/// # Errors
/// The switch is not reachable, or it refused the request.
pub fn call(path: &Path, req: &CtlRequest) -> Result<Value, CallError> {
    let unreachable = |e: &dyn std::fmt::Display| {
        CallError::Unreachable(format!(
            "cannot reach the switch at {}: {e}; is `sgswitch run` running? (--socket names another control socket)",
            path.display()
        ))
    };
    let mut conn = UnixStream::connect(path).map_err(|e| unreachable(&e))?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| unreachable(&e))?;
    let text = serde_json::to_string(req).expect("a request serialises");
    writeln!(conn, "{text}").map_err(|e| unreachable(&e))?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).map_err(|e| unreachable(&e))?;
    let v: Value = serde_json::from_str(&reply).map_err(|e| unreachable(&format!("unreadable answer ({e})")))?;
    if v["ok"].as_bool() == Some(true) {
        Ok(v["result"].clone())
    } else {
        Err(CallError::Refused(v["error"].as_str().unwrap_or("the switch refused the request").to_owned()))
    }
}
