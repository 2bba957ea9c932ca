//! `/metrics`: the Prometheus text exposition format (version 0.0.4),
//! served on `[metrics] listen` by hyper on a one-thread tokio runtime.
//!
//! # Design
//! A scrape reads the loops' counters ([`crate::datapath::stats`]) with relaxed
//! loads and sums them over the loops; it takes no lock a poll loop takes,
//! so a slow or stuck scraper can never stall the datapath. The text is
//! rendered by [`render`], a plain encoder of the format (HELP and TYPE
//! per family, escaped label values); `promtool check metrics` and a real
//! Prometheus server check it in the tests. The per-loop atomic arrays are
//! summed at scrape time, which does not fit prometheus-client's model of
//! owned metric objects without a custom collector for every family; the
//! encoder is the smaller thing to get right (`docs/design.md`).
//!
//! # The server
//! hyper (what most Rust exporters serve with, and what bounds a client
//! here) on a current-thread tokio runtime: one thread for every
//! connection, never one per client. What a client can make it do is
//! bounded:
//! - **connections**: at most [`MAX_CONNECTIONS`]; at the limit a new one
//!   takes the place of the oldest that has not sent a request yet (a slow
//!   or idle client), and if every connection is being answered it is
//!   closed;
//! - **time**: the request head within [`HEAD_TIMEOUT`], the whole
//!   connection within [`CONNECTION_TIMEOUT`]; one request per connection
//!   (`Connection: close`);
//! - **size**: request heads up to hyper's smallest buffer (8 KiB); a
//!   request that declares a body is refused (413) without reading it;
//! - **paths**: `GET`/`HEAD /metrics` only; other paths 404, other methods
//!   405;
//! - **descriptors**: an accept error (the process out of file
//!   descriptors) backs off and retries, up to a second apart; the switch
//!   raises its soft limit on open files to the hard limit at start.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tracing::warn;

use crate::port::xdp::BusyPolled;

use super::View;
use super::clients::Clients;
use crate::datapath::Kind;
use crate::engine::stats::{BATCH_BUCKETS, CONNTRACK_EVENTS, KERNEL_STATS, LoopStats};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection lives at most.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds the endpoint.
///
/// # Errors
/// The address cannot be bound; the message names it.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    let err = |e: std::io::Error| format!("metrics endpoint {addr}: cannot listen ({e}); set [metrics] listen in host.toml");
    let l = std::net::TcpListener::bind(addr).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    Ok(l)
}

/// Serves `/metrics` until the switch stops.
pub fn serve(listener: std::net::TcpListener, shared: Arc<View>) -> Option<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sgswitch-metrics".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build() {
                Ok(rt) => rt,
                Err(e) => {
                    warn!("metrics endpoint: cannot start its runtime ({e}); /metrics is not served");
                    return;
                }
            };
            rt.block_on(accept_loop(listener, shared));
            rt.shutdown_timeout(Duration::from_millis(500));
        })
        .ok()
}

async fn accept_loop(listener: std::net::TcpListener, shared: Arc<View>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!("metrics endpoint: {e}; /metrics is not served");
            return;
        }
    };
    let clients = Clients::new(MAX_CONNECTIONS);
    let mut backoff = Duration::from_millis(10);
    let mut warned = false;
    while !shared.stop.is_set() {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shared.stop.wait() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(10);
                warned = false;
                stream
            }
            Err(e) => {
                // Out of descriptors (EMFILE, ENFILE) or memory: wait for
                // connections to end, and try again.
                if !warned {
                    warn!("metrics endpoint: accepting a connection failed ({e}); retrying");
                    warned = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Some(place) = clients.admit() else { continue };
        let place = Arc::new(place);
        let shared = Arc::clone(&shared);
        let mine = Arc::clone(&place);
        let task = tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                // A request head arrived: no longer a client to close for room.
                mine.asked();
                let shared = Arc::clone(&shared);
                async move { Ok::<_, std::convert::Infallible>(respond(&req, &shared)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(8192)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
        });
        place.waiting(task.abort_handle());
    }
}

/// The answer to one request.
fn respond(req: &Request<hyper::body::Incoming>, shared: &View) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r
    };
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET /metrics is served\n");
        r.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let declares_body = req.headers().contains_key(hyper::header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .is_some_and(|v| v.to_str().ok().and_then(|n| n.trim().parse::<u64>().ok()) != Some(0));
    if declares_body {
        return text(StatusCode::PAYLOAD_TOO_LARGE, "a metrics request has no body\n");
    }
    if req.uri().path() != "/metrics" {
        return text(StatusCode::NOT_FOUND, "not found; metrics are at /metrics\n");
    }
    let mut r = Response::new(Full::new(Bytes::from(render(shared))));
    r.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    r
}

/// The text format, family by family.
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.0.push_str("\\\\"),
                        '"' => self.0.push_str("\\\""),
                        '\n' => self.0.push_str("\\n"),
                        c => self.0.push(c),
                    }
                }
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A counter family with one sample per poll loop.
    fn per_loop(&mut self, shared: &View, name: &str, help: &str, value: impl Fn(&LoopStats) -> u64) {
        self.family(name, "counter", help);
        for l in &shared.loops.stats {
            self.sample(name, &[("loop", &l.index.to_string())], value(l));
        }
    }
}

/// Renders every metric of the running switch.
pub fn render(shared: &View) -> String {
    let mut t = Text(String::with_capacity(16 * 1024));
    let published = shared.control.published.load();
    let plan = &published.plan;
    let mut ports: Vec<(usize, &str)> = vec![(0, "none")];
    ports.extend(plan.ports.iter().map(|p| (usize::from(p.zone) + 1, &*p.id)));

    // Traffic.
    for (name, bytes, help) in [
        ("sgswitch_packets_total", false, "Packets judged, by port, direction (of the port), action and reason."),
        ("sgswitch_bytes_total", true, "Bytes of the packets judged, by port, direction, action and reason."),
    ] {
        t.family(name, "counter", help);
        for &(slot, id) in &ports {
            for (di, d) in ["ingress", "egress"].iter().enumerate() {
                for (fi, action) in ["drop", "forward"].iter().enumerate() {
                    for kind in Kind::ALL {
                        let reason = kind.label();
                        let (packets, octets) = shared.loops.cell(slot, di, fi, kind.index());
                        let n = if bytes { octets } else { packets };
                        if n > 0 {
                            t.sample(name, &[("port", id), ("direction", d), ("action", action), ("reason", reason)], n);
                        }
                    }
                }
            }
        }
    }

    // Rules.
    let hits = shared.loops.rule_totals();
    t.family(
        "sgswitch_rule_hits_total",
        "counter",
        "First packets decided by a rule (group, direction, its id or else its 0-based index in the file, action), as `sgswitch trace` names it.",
    );
    for (l, n) in &hits {
        let name = l.name.label();
        t.sample(
            "sgswitch_rule_hits_total",
            &[("group", &l.group), ("direction", l.direction), (name.0, &name.1), ("action", l.action)],
            n,
        );
    }

    // Connection tracking.
    t.family("sgswitch_conntrack_entries", "gauge", "Tracked flows per port.");
    for p in &plan.ports {
        t.sample("sgswitch_conntrack_entries", &[("port", &p.id)], shared.loops.flows(p.zone));
    }
    t.family(
        "sgswitch_conntrack_capacity",
        "gauge",
        "Most flows the host tracks: the poll loops' tables together (`[conntrack] capacity`, shared between the loops).",
    );
    t.sample("sgswitch_conntrack_capacity", &[], shared.loops.stats.iter().map(|l| l.conntrack_capacity.get()).sum::<u64>());
    t.family("sgswitch_conntrack_port_capacity", "gauge", "Most flows one port tracks (`[conntrack] per_port_capacity`).");
    t.sample("sgswitch_conntrack_port_capacity", &[], shared.host.conntrack.per_port_capacity);
    for (i, (event, help)) in CONNTRACK_EVENTS.iter().enumerate() {
        let name = format!("sgswitch_conntrack_{event}_total");
        t.family(&name, "counter", &format!("Connection tracking: {help}."));
        t.sample(&name, &[], shared.loops.stats.iter().map(|l| l.conntrack[i].get()).sum::<u64>());
    }

    // Poll loops.
    t.family("sgswitch_loop_info", "gauge", "A poll loop and the core it is pinned to.");
    for l in &shared.loops.stats {
        t.sample("sgswitch_loop_info", &[("loop", &l.index.to_string()), ("core", &l.core.to_string())], 1);
    }
    t.per_loop(shared, "sgswitch_loop_batches_total", "Batches of received frames processed.", |l| l.batches.get());
    t.family("sgswitch_loop_batch_packets", "histogram", "Frames per received batch.");
    for l in &shared.loops.stats {
        let lp = l.index.to_string();
        let mut acc = 0;
        for (le, c) in BATCH_BUCKETS.iter().zip(&l.batch_sizes) {
            acc += c.get();
            t.sample("sgswitch_loop_batch_packets_bucket", &[("loop", &lp), ("le", &le.to_string())], acc);
        }
        t.sample("sgswitch_loop_batch_packets_bucket", &[("loop", &lp), ("le", "+Inf")], acc);
        t.sample("sgswitch_loop_batch_packets_sum", &[("loop", &lp)], l.batch_packets.get());
        t.sample("sgswitch_loop_batch_packets_count", &[("loop", &lp)], l.batches.get());
    }
    t.family("sgswitch_loop_iterations_total", "counter", "Poll-loop iterations, busy (some ring had frames) or idle.");
    for l in &shared.loops.stats {
        let lp = l.index.to_string();
        t.sample("sgswitch_loop_iterations_total", &[("loop", &lp), ("state", "busy")], l.busy.get());
        t.sample("sgswitch_loop_iterations_total", &[("loop", &lp), ("state", "idle")], l.idle.get());
    }
    t.family(
        "sgswitch_napi_thread_yielded_info",
        "gauge",
        "A NAPI thread pinned to a poll loop's core that runs at idle priority for it ([datapath] napi_threads = \"yield\"): the kernel receives for its interface only as fast as the loop takes frames.",
    );
    for l in &shared.loops.stats {
        let (lp, core) = (l.index.to_string(), l.core.to_string());
        for name in l.napi_yielded.load().iter() {
            t.sample("sgswitch_napi_thread_yielded_info", &[("loop", &lp), ("core", &core), ("thread", name)], 1);
        }
    }
    t.family(
        "sgswitch_loop_core_idle_info",
        "gauge",
        "What a poll loop's core does when idle ([datapath] core_idle): \"poll\" (the kernel's polling idle state: a frame that comes wakes its receiver at once) or \"halt\" (it waits for the core to wake), and why.",
    );
    for l in &shared.loops.stats {
        if let Some(i) = l.core_idle.get() {
            let (lp, core) = (l.index.to_string(), l.core.to_string());
            let idle = if i.polls { "poll" } else { "halt" };
            t.sample("sgswitch_loop_core_idle_info", &[("loop", &lp), ("core", &core), ("idle", idle), ("why", &i.why)], 1);
        }
    }
    t.per_loop(
        shared,
        "sgswitch_loop_stepped_aside_total",
        "Times a poll loop, busy for a millisecond without a break, paused to give the NAPI threads that yield to it a turn.",
        |l| l.stepped_aside.get(),
    );
    t.per_loop(shared, "sgswitch_loop_copy_failed_total", "Copies (floods, handed-over frames) that found no free UMEM frame.", |l| {
        l.copy_failed.get()
    });

    t.family("sgswitch_fastpath_flows", "gauge", "Flows a poll loop gives the interfaces' XDP programs to forward ([datapath] fast_path).");
    for l in &shared.loops.stats {
        t.sample("sgswitch_fastpath_flows", &[("loop", &l.index.to_string())], l.fast_flows.get());
    }
    t.per_loop(
        shared,
        "sgswitch_fastpath_packets_total",
        "Frames the XDP programs forwarded for a loop's flows, as of its last sync (also in the ports' counters).",
        |l| l.fast_packets.get(),
    );
    t.per_loop(shared, "sgswitch_fastpath_bytes_total", "Bytes of those frames.", |l| l.fast_bytes.get());
    t.per_loop(
        shared,
        "sgswitch_fastpath_full_total",
        "Times a loop could not give a flow to the XDP programs (its share of 4,096, or the map, was full); the flow's frames stay with the loop.",
        |l| l.fast_full.get(),
    );

    t.family("sgswitch_loop_handover_total", "counter", "Frames handed from a poll loop to the loop that owns their next stage or socket, by outcome (sent, dropped: the inbox was full, received).");
    for l in &shared.loops.stats {
        let lp = l.index.to_string();
        for (outcome, c) in [("sent", &l.handover_sent), ("dropped", &l.handover_dropped), ("received", &l.handover_received)] {
            t.sample("sgswitch_loop_handover_total", &[("loop", &lp), ("outcome", outcome)], c.get());
        }
    }

    t.family(
        "sgswitch_loop_flow_cache_total",
        "counter",
        "Frames of the flow cache's shape (untagged IPv4 UDP, ICMP echo, or TCP with ACK set; no IP options, not fragments) by result: hit (a recorded route of an established flow taken) or miss (decided from scratch).",
    );
    for l in &shared.loops.stats {
        let lp = l.index.to_string();
        for (result, c) in [("hit", &l.pipeline.flow_cache_hits), ("miss", &l.pipeline.flow_cache_misses)] {
            t.sample("sgswitch_loop_flow_cache_total", &[("loop", &lp), ("result", result)], c.get());
        }
    }

    // Interfaces.
    t.family("sgswitch_interface_up", "gauge", "1 if the AF_XDP sockets of an interface (a port's, or the uplink's) are open, 0 if it is down: deleted, or a socket failed (`sgswitch ctl status` says why).");
    for l in &shared.loops.stats {
        for s in l.links.load().iter() {
            t.sample(
                "sgswitch_interface_up",
                &[("interface", &s.interface), ("port", s.port.as_deref().unwrap_or("uplink"))],
                u8::from(s.up),
            );
        }
    }

    // vhost-user ports, then AF_XDP sockets.
    let (vhost, sockets): (Vec<_>, Vec<_>) = shared.loops.sockets().into_iter().partition(|s| s.vhost.is_some());
    t.family(
        "sgswitch_vhost_user_info",
        "gauge",
        "A vhost-user port's socket, mode (server: the switch listens) and connection state (waiting, connected, running).",
    );
    for s in &vhost {
        let state = s.vhost.as_ref().map_or(0, |v| v.connection.load(Ordering::Relaxed));
        let mode = s.why.trim_start_matches("vhost-user ");
        t.sample(
            "sgswitch_vhost_user_info",
            &[("socket", &s.interface), ("mode", mode), ("state", crate::port::vhost::Connection::from_u8(state).label())],
            1,
        );
    }
    t.family(
        "sgswitch_vhost_user_drops_total",
        "counter",
        "Frames a vhost-user port dropped: guest_rx_full (the guest posted no receive buffers), from_guest (no free frame, or too large), malformed (descriptor chains that break the rules).",
    );
    for s in &vhost {
        for (reason, n) in [("guest_rx_full", s.tx_full.get()), ("from_guest", s.kernel[0].get()), ("malformed", s.kernel[1].get())] {
            t.sample("sgswitch_vhost_user_drops_total", &[("socket", &s.interface), ("reason", reason)], n);
        }
    }

    t.family(
        "sgswitch_xsk_info",
        "gauge",
        "An AF_XDP socket with the XDP attach mode, zero-copy and busy-poll state in use, and why (the modes refused first).",
    );
    for s in &sockets {
        let q = s.queue.to_string();
        let mode = if s.native { "native" } else { "skb" };
        let zc = if s.zero_copy { "true" } else { "false" };
        let bp = BusyPolled::from_u8(s.busy_poll.load(Ordering::Relaxed)).label();
        t.sample(
            "sgswitch_xsk_info",
            &[("interface", &s.interface), ("queue", &q), ("mode", mode), ("zero_copy", zc), ("busy_poll", bp), ("why", &s.why)],
            1,
        );
    }
    t.family("sgswitch_xsk_tx_ring_full_drops_total", "counter", "Frames dropped because the socket's tx ring was full.");
    for s in &sockets {
        t.sample("sgswitch_xsk_tx_ring_full_drops_total", &[("interface", &s.interface), ("queue", &s.queue.to_string())], s.tx_full.get());
    }
    t.family(
        "sgswitch_xsk_checksums_finished_total",
        "counter",
        "TCP and UDP checksums a VM left for the host to finish (checksum offload on its NIC), finished by the switch.",
    );
    for s in sockets.iter().filter(|s| s.port) {
        t.sample(
            "sgswitch_xsk_checksums_finished_total",
            &[("interface", &s.interface), ("queue", &s.queue.to_string())],
            s.checksums_finished.get(),
        );
    }
    for (i, (stat, help)) in KERNEL_STATS.iter().enumerate() {
        let name = format!("sgswitch_xsk_{stat}_total");
        t.family(&name, "counter", &format!("Kernel XDP socket statistics: {help}."));
        for s in &sockets {
            t.sample(&name, &[("interface", &s.interface), ("queue", &s.queue.to_string())], s.kernel[i].get());
        }
    }

    // Configuration.
    let c = &shared.control.stats;
    t.family(
        "sgswitch_config_generation",
        "gauge",
        "Generation of the configuration in force: with [store], the store revision it was read at; else 1 at start, +1 per applied reload.",
    );
    t.sample("sgswitch_config_generation", &[], c.shown());
    if let Some(link) = &shared.control.store {
        let st = &link.status;
        let d = st.detail();
        t.family(
            "sgswitch_store_connected",
            "gauge",
            "1 while the store (etcd) answers; 0 while it does not (the configuration in force stays).",
        );
        t.sample("sgswitch_store_connected", &[], u64::from(st.connected.load(Ordering::Relaxed)));
        t.family("sgswitch_store_revision", "gauge", "The newest store revision read (the one in force is sgswitch_config_generation).");
        t.sample("sgswitch_store_revision", &[], st.revision_seen.load(Ordering::Relaxed));
        t.family("sgswitch_store_disconnects_total", "counter", "Times the store stopped answering.");
        t.sample("sgswitch_store_disconnects_total", &[], st.disconnects.load(Ordering::Relaxed));
        t.family("sgswitch_store_refused_total", "counter", "Store revisions that did not load; the configuration before stayed in force.");
        t.sample("sgswitch_store_refused_total", &[], st.refused.load(Ordering::Relaxed));
        t.family("sgswitch_store_address_conflicts", "gauge", "Addresses ports on two hosts claim: members of no group until resolved.");
        t.sample("sgswitch_store_address_conflicts", &[], d.conflicts.len());
        t.family("sgswitch_store_remote_ports", "gauge", "Other hosts' ports in the configuration in force.");
        t.sample("sgswitch_store_remote_ports", &[], d.remote_ports);
        t.family("sgswitch_store_published_ports", "gauge", "This host's ports published in the store.");
        t.sample("sgswitch_store_published_ports", &[], st.published.load(Ordering::Relaxed));
    }
    t.family("sgswitch_config_last_reload_timestamp_seconds", "gauge", "Unix time the configuration in force was loaded.");
    t.sample("sgswitch_config_last_reload_timestamp_seconds", &[], c.loaded_at_ms.load(Ordering::Relaxed) as f64 / 1000.0);
    t.family("sgswitch_config_reloads_total", "counter", "Reloads, applied (success) or refused (failure).");
    t.sample("sgswitch_config_reloads_total", &[("result", "success")], c.reloads_ok.load(Ordering::Relaxed));
    t.sample("sgswitch_config_reloads_total", &[("result", "failure")], c.reloads_failed.load(Ordering::Relaxed));
    t.family(
        "sgswitch_config_restart_pending",
        "gauge",
        "Settings of host.toml the configuration in force changes that take effect only at the next start (the log and `ctl status` name them).",
    );
    t.sample("sgswitch_config_restart_pending", &[], c.needs_restart.lock().map_or(0, |v| v.len()));
    t.family("sgswitch_config_ports", "gauge", "Ports in the configuration in force.");
    t.sample("sgswitch_config_ports", &[], plan.ports.len());

    // Flow log.
    if let Some(first) = shared.flow_log.first() {
        t.family("sgswitch_flow_log_records_total", "counter", "Denied packets offered to the flow log, by what became of them.");
        for (i, (outcome, _)) in first.outcomes().iter().enumerate() {
            let n: u64 = shared.flow_log.iter().map(|fl| fl.outcomes()[i].1.get()).sum();
            t.sample("sgswitch_flow_log_records_total", &[("outcome", outcome)], n);
        }
    }

    let started = shared.started.duration_since(std::time::SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    t.family("sgswitch_start_time_seconds", "gauge", "Unix time the switch started.");
    t.sample("sgswitch_start_time_seconds", &[], started);
    t.family("sgswitch_build_info", "gauge", "The running sgswitch version.");
    t.sample("sgswitch_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
    t.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut t = Text(String::new());
        t.family("x_total", "counter", "a \\ b\nc");
        t.sample("x_total", &[("g", "a\"b\\c\nd")], 3);
        assert_eq!(t.0, "# HELP x_total a \\\\ b\\nc\n# TYPE x_total counter\nx_total{g=\"a\\\"b\\\\c\\nd\"} 3\n");
    }
}
