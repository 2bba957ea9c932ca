//! What an attacker or an unlucky operator does to a running switch, as
//! root on the namespace topology: hostile HTTP clients on the metrics
//! endpoint, slow and many clients on the control socket, a reload that
//! blocks, interfaces deleted under the switch, a SIGKILL, a file caught
//! half-written, and a large answer while other ports carry traffic.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use sgswitch_tests::netns::{Kill, Topology, examples, http_get, in_ns, require_root, start_switch, threads};

const BIN: &str = env!("CARGO_BIN_EXE_sgswitch");

/// One raw HTTP exchange: `request` as written, the answer as read (up to
/// five seconds).
fn raw_http(addr: &str, request: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Holds `n` TCP connections to `addr` open without a byte sent, from a
/// python3 process (which raises its own open-file limit), until killed.
fn idle_connections(addr: &str, n: usize) -> Kill {
    let (host, port) = addr.split_once(':').expect("host:port");
    let script = format!(
        "import resource,socket,time\nresource.setrlimit(resource.RLIMIT_NOFILE,(65536,65536))\nk=[]\nfor i in range({n}):\n  s=socket.socket()\n  s.setblocking(False)\n  try: s.connect(('{host}',{port}))\n  except BlockingIOError: pass\n  k.append(s)\nprint('held',flush=True)\ntime.sleep(600)\n"
    );
    let mut child = Command::new("python3").args(["-c", &script]).stdout(std::process::Stdio::piped()).spawn().expect("python3");
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    std::io::BufRead::read_line(&mut out, &mut line).expect("python3 says held");
    Kill(child)
}

#[test]
fn the_metrics_endpoint_survives_hostile_clients_and_keeps_answering() {
    require_root();
    let _topology = Topology::up();
    let metrics = "127.0.0.1:19481";
    let dir = examples(metrics, "");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("switch.log");
    let switch = start_switch(BIN, dir.path(), &log);
    let pid = switch.0.id();
    let pings = || in_ns("inet", "ping -c 2 -i 0.2 -W 1 10.0.0.11");
    assert!(pings(), "ping before");

    // A declared body of 100 GB: refused without reading or allocating it.
    let answer = raw_http(metrics, "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let answer = raw_http(metrics, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    let answer = raw_http(metrics, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    // A head far over the limit.
    let huge = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n", "a".repeat(1 << 20));
    let mut s = TcpStream::connect(metrics).expect("connect");
    let _ = s.write_all(huge.as_bytes());
    drop(s);
    assert!(http_get(metrics, "/metrics").is_some_and(|m| m.contains("sgswitch_build_info")), "still answering");

    // 2,000 connections that never send a byte: the switch keeps forwarding
    // and answering, with no thread per connection.
    let before = threads(pid);
    let idle = idle_connections(metrics, 2000);
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let scraped = http_get(metrics, "/metrics");
    assert!(scraped.is_some_and(|m| m.contains("sgswitch_build_info")), "a scrape while 2,000 clients are idle");
    assert!(t.elapsed() < Duration::from_secs(2), "the scrape took {:?}", t.elapsed());
    assert!(pings(), "ping while 2,000 clients are idle");
    assert_eq!(threads(pid), before, "no thread per connection");
    drop(idle);

    // Slow clients: a byte every second on 50 connections.
    let slow = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import socket,time\nk=[socket.create_connection(('127.0.0.1',{}))for i in range(50)]\nfor i in range(8):\n  for s in k:\n    try: s.send(b'G')\n    except OSError: pass\n  time.sleep(1)\n",
                metrics.rsplit(':').next().expect("port")
            ),
        ])
        .spawn()
        .expect("python3");
    let slow = Kill(slow);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(http_get(metrics, "/metrics").is_some(), "a scrape among slow clients");
    assert_eq!(threads(pid), before, "no thread per slow client");
    drop(slow);
    assert!(std::fs::read_to_string(&log).expect("log").lines().all(|l| !l.contains("panicked")), "no panic");
    drop(switch);
}
