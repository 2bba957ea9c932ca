//! The namespace topology of `scripts/netns.sh` for the end-to-end tests
//! (root only): bring it up and down, run commands in it, and copies of
//! `examples/` with private metrics and control endpoints, so two switches
//! started by tests never share an address.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `cmd` in bash; whether it succeeded (output discarded).
pub fn sh(cmd: &str) -> bool {
    Command::new("bash").arg("-c").arg(cmd).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Panics with what the end-to-end tests need unless they can run.
pub fn require_root() {
    if !sh("[ \"$(id -u)\" -eq 0 ] && command -v ip && command -v nc && command -v ethtool") {
        panic!("the end-to-end tests need root, iproute2, netcat-openbsd and ethtool (scripts/setup.sh installs them)");
    }
}

/// A child process killed (and reaped) when dropped, so a failing test
/// leaves no switch or server behind.
#[derive(Debug)]
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The topology; removed when dropped. One at a time in a test binary
/// (the tests of one binary run in parallel; the topology's names are
/// fixed): `up` waits for the one before to be dropped.
#[derive(Debug)]
pub struct Topology {
    _one: std::sync::MutexGuard<'static, ()>,
}

static ONE_TOPOLOGY: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Topology {
    pub fn up() -> Topology {
        let one = ONE_TOPOLOGY.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        assert!(sh(&format!("{}/scripts/netns.sh up", root().display())), "netns.sh up");
        Topology { _one: one }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        sh(&format!("{}/scripts/netns.sh down", root().display()));
    }
}

/// Sends each frame `times` times from `eth0` of namespace `ns` (a raw
/// AF_PACKET socket in python3): frames of any shape, tagged or spoofed.
pub fn send_frames(ns: &str, frames: &[Vec<u8>], times: usize) {
    const SEND: &str = "import socket,sys\ns=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\ns.bind(('eth0',0))\nn=int(sys.argv[1])\nfor line in sys.stdin:\n  f=bytes.fromhex(line.strip())\n  for _ in range(n): s.send(f)\n";
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", SEND, &times.to_string()])
        .stdin(Stdio::piped())
        .spawn()
        .expect("python3 sender");
    {
        let stdin = child.stdin.as_mut().expect("stdin");
        for f in frames {
            let hex: String = f.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(stdin, "{hex}").expect("write to the sender");
        }
    }
    drop(child.stdin.take());
    assert!(child.wait().is_ok_and(|s| s.success()), "sending frames in {ns}");
}

/// The value of one sample of a Prometheus text page, 0 if absent.
pub fn sample(page: &str, name_and_labels: &str) -> u64 {
    page.lines().find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0)
}

pub fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// A copy of `examples/` whose switch serves metrics on `metrics`, its
/// control socket and its history in the copy's own directory
/// (`control.sock` and `.history.sqlite` beside `host.toml`), plus `extra`
/// appended to `host.toml`.
pub fn examples(metrics: &str, extra: &str) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&root().join("examples"), dir.path());
    let host = dir.path().join("host.toml");
    let text = std::fs::read_to_string(&host).expect("read host.toml");
    assert!(text.contains("listen = \"127.0.0.1:9469\""), "examples/host.toml sets the metrics address");
    let text = text.replace("listen = \"127.0.0.1:9469\"", &format!("listen = \"{metrics}\""));
    let control = dir.path().join("control.sock");
    // The history in the copy too, unless the test sets its own.
    let history = if extra.contains("[history]") {
        String::new()
    } else {
        format!("\n[history]\npath = \"{}\"\n", dir.path().join(".history.sqlite").display())
    };
    std::fs::write(&host, format!("{text}\n[control]\nsocket = \"{}\"\n{history}{extra}", control.display())).expect("write host.toml");
    dir
}

/// Waits up to ten seconds for `text` to appear in `log` more than `after`
/// times.
pub fn wait_for(log: &Path, text: &str, after: usize) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if std::fs::read_to_string(log).is_ok_and(|s| s.matches(text).count() > after) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `GET path` over HTTP/1.0 from a server on loopback; the body, if the
/// status is 200.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned()).or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_owned()))
}

/// Percent-encodes a query-string value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// Starts `sgswitch run` on `dir` (the binary at `bin`), its log in `log`,
/// and waits until it runs.
pub fn start_switch(bin: &str, dir: &Path, log: &Path) -> Kill {
    let child = Command::new(bin)
        .args(["run", dir.to_str().expect("utf-8")])
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("start sgswitch run");
    let k = Kill(child);
    assert!(wait_for(log, "running on", 0), "switch did not start: {}", std::fs::read_to_string(log).unwrap_or_default());
    k
}

/// Context switches (voluntary and not) of each thread of `pid`, by
/// thread id, with its name.
pub fn thread_switches(pid: &str) -> std::collections::BTreeMap<String, (String, u64)> {
    let mut out = std::collections::BTreeMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks").flatten() {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim().to_owned();
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let n =
            status.lines().filter(|l| l.contains("ctxt_switches:")).filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()).sum();
        out.insert(t.file_name().to_string_lossy().into_owned(), (name, n));
    }
    out
}

/// Runs `cmd` in bash inside namespace `ns`; whether it succeeded.
pub fn in_ns(ns: &str, cmd: &str) -> bool {
    sh(&format!("ip netns exec sgs-{ns} bash -c {}", shell_quote(cmd)))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The threads of process `pid`.
pub fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}
