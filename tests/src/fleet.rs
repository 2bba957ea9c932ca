//! A fleet on one machine, for the fleet tests and benchmark: a real etcd
//! cluster on loopback (Debian's `etcd-server`, started here, data in a
//! temporary directory) and hosts that are `sgswitch run --no-datapath`
//! processes, each with its own directory, control socket and log.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A free TCP port on loopback (bound and let go: the kernel does not
/// hand it out again at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// One member of the cluster.
#[derive(Debug)]
struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// An etcd cluster of loopback members.
#[derive(Debug)]
pub struct Etcd {
    dir: TempDir,
    members: Vec<Member>,
    /// With TLS: the folder of `ca.pem`, `server.pem`/`.key` and
    /// `client.pem`/`.key`; clients must present a certificate.
    tls: Option<PathBuf>,
}

/// Makes a CA, a server certificate for 127.0.0.1 and a client certificate
/// in `dir` with openssl.
///
/// # Panics
/// openssl fails.
pub fn make_certificates(dir: &Path) {
    let ssl = |args: &[&str]| {
        let o = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    ssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=sgswitch-test-ca",
        "-days",
        "2",
    ]);
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n").expect("ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    for who in ["server", "client"] {
        let (key, csr, pem, ext) = (format!("{who}.key"), format!("{who}.csr"), format!("{who}.pem"), format!("{who}.ext"));
        ssl(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &format!("/CN={who}")]);
        ssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
}

impl Etcd {
    /// Starts `n` members and waits until the cluster answers.
    ///
    /// # Panics
    /// etcd is not installed or does not come up within 30 s.
    pub fn start(n: usize) -> Etcd {
        Etcd::start_with(n, false)
    }

    /// One member serving its clients over TLS and requiring their
    /// certificates (`make_certificates` in its folder, [`Etcd::tls`]).
    pub fn start_tls() -> Etcd {
        Etcd::start_with(1, true)
    }

    /// The folder of the certificates, when the cluster serves TLS.
    pub fn tls(&self) -> Option<&Path> {
        self.tls.as_deref()
    }

    fn start_with(n: usize, tls: bool) -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let members = (0..n).map(|i| Member { name: format!("e{i}"), client: free_port(), peer: free_port(), child: None }).collect();
        let tls = tls.then(|| {
            let certs = dir.path().join("certs");
            std::fs::create_dir_all(&certs).expect("certs");
            make_certificates(&certs);
            certs
        });
        let mut e = Etcd { dir, members, tls };
        for i in 0..n {
            e.start_member(i, true);
        }
        e.wait_healthy(Duration::from_secs(30));
        e
    }

    fn cluster(&self) -> String {
        self.members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer)).collect::<Vec<_>>().join(",")
    }

    fn start_member(&mut self, i: usize, new: bool) {
        let cluster = self.cluster();
        let data = self.dir.path().join(&self.members[i].name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", self.members[i].name)))
            .expect("etcd log");
        let scheme = self.scheme();
        let m = &mut self.members[i];
        let mut c = Command::new("etcd");
        c.args(["--name", &m.name, "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &format!("{scheme}://127.0.0.1:{}", m.client)])
            .args(["--advertise-client-urls", &format!("{scheme}://127.0.0.1:{}", m.client)])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", m.peer)])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{}", m.peer)])
            .args(["--initial-cluster", &cluster, "--initial-cluster-token", "sgswitch-test"])
            .args(["--initial-cluster-state", if new { "new" } else { "existing" }])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .args(self.tls.iter().flat_map(|t| {
                [
                    "--client-cert-auth".to_owned(),
                    format!("--trusted-ca-file={}", t.join("ca.pem").display()),
                    format!("--cert-file={}", t.join("server.pem").display()),
                    format!("--key-file={}", t.join("server.key").display()),
                ]
            }))
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        m.child = Some(c.spawn().expect("etcd (apt-get install etcd-server)"));
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The client endpoints of the members, up or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client)).collect()
    }

    fn endpoints_up(&self) -> String {
        let up = self.members.iter().filter(|m| m.child.is_some());
        up.map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client)).collect::<Vec<_>>().join(",")
    }

    /// Runs etcdctl against the members that are up.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoints_up(), "--command-timeout=5s"])
            .args(self.tls.iter().flat_map(|t| {
                [
                    format!("--cacert={}", t.join("ca.pem").display()),
                    format!("--cert={}", t.join("client.pem").display()),
                    format!("--key={}", t.join("client.key").display()),
                ]
            }))
            .args(args)
            .output()
            .expect("etcdctl (apt-get install etcd-client)")
    }

    /// Waits until every member that is up says it is healthy.
    ///
    /// # Panics
    /// Not within `within`.
    pub fn wait_healthy(&self, within: Duration) {
        let t = Instant::now();
        loop {
            let o = self.ctl(&["endpoint", "health"]);
            if o.status.success() {
                return;
            }
            assert!(t.elapsed() < within, "etcd not healthy: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again with its data.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is up");
        self.start_member(i, false);
    }

    /// The index of the member that leads, as the members up see it.
    ///
    /// # Panics
    /// No leader within 10 s.
    pub fn leader(&self) -> usize {
        let t = Instant::now();
        loop {
            let o = self.ctl(&["endpoint", "status", "-w", "json"]);
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) {
                for s in v.as_array().into_iter().flatten() {
                    let (me, leader) = (&s["Status"]["header"]["member_id"], &s["Status"]["leader"]);
                    if me == leader && !me.is_null() {
                        let ep = s["Endpoint"].as_str().unwrap_or_default();
                        if let Some(i) = self.members.iter().position(|m| ep.ends_with(&format!(":{}", m.client))) {
                            return i;
                        }
                    }
                }
            }
            assert!(t.elapsed() < Duration::from_secs(10), "no etcd leader: {}", String::from_utf8_lossy(&o.stdout));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `[store]` table for a host named `host` under `prefix`.
    pub fn store_toml(&self, prefix: &str, host: &str, ttl: u32) -> String {
        self.store_toml_on(prefix, host, ttl, &(0..self.members.len()).collect::<Vec<_>>())
    }

    /// The `[store]` table of a host that knows only the members `on`.
    pub fn store_toml_on(&self, prefix: &str, host: &str, ttl: u32, on: &[usize]) -> String {
        let all = self.endpoints();
        let eps: Vec<String> = on.iter().map(|&i| format!("\"{}\"", all[i])).collect();
        let mut t = format!(
            "[store]\nkind = \"etcd\"\nendpoints = [{}]\nprefix = \"{prefix}\"\nhost = \"{host}\"\nlease_ttl_seconds = {ttl}\ntimeout_ms = 1000\n",
            eps.join(", ")
        );
        if let Some(c) = &self.tls {
            let f = |n: &str| c.join(n).display().to_string();
            t += &format!("ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n", f("ca.pem"), f("client.pem"), f("client.key"));
        }
        t
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A host: `sgswitch run --no-datapath` on its own directory.
#[derive(Debug)]
pub struct Host {
    pub name: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Host {
    /// Writes the host's directory under `root` (host.toml with `store`,
    /// and `ports`: (id, TOML)), and starts it with the binary `bin`. The
    /// directory is watched, as by default.
    pub fn start(bin: &str, root: &Path, name: &str, store: &str, ports: &[(String, String)]) -> Host {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("ports")).expect("host dir");
        let socket = root.join(format!("{name}.sock"));
        let host_toml = format!(
            "[metrics]\nlisten = \"127.0.0.1:0\"\n[control]\nsocket = \"{}\"\n[history]\nenabled = false\n{store}",
            socket.display()
        );
        std::fs::write(dir.join("host.toml"), host_toml).expect("host.toml");
        for (id, text) in ports {
            std::fs::write(dir.join("ports").join(format!("{id}.toml")), text).expect("port");
        }
        let log = root.join(format!("{name}.log"));
        let mut h = Host { name: name.to_owned(), dir, socket, log, child: None };
        h.spawn(bin);
        h
    }

    fn spawn(&mut self, bin: &str) {
        let out = std::fs::File::create(&self.log).expect("log");
        let mut c = Command::new(bin);
        c.args(["run", "--no-datapath"]).arg(&self.dir).stdin(Stdio::null()).stdout(out.try_clone().expect("log")).stderr(out);
        self.child = Some(c.spawn().expect("sgswitch run"));
    }

    /// Kills the host (SIGKILL: its lease is not revoked, it runs out).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// `ctl status --json`, if the host answers.
    pub fn status(&self, bin: &str) -> Option<serde_json::Value> {
        let o = Command::new(bin).args(["ctl", "--socket"]).arg(&self.socket).args(["status", "--json"]).output().ok()?;
        serde_json::from_slice(&o.stdout).ok()
    }

    /// The generation in force (the store revision), if the host answers.
    pub fn generation(&self, bin: &str) -> Option<u64> {
        self.status(bin).and_then(|v| v["generation"].as_u64())
    }

    /// `ctl trace` of a TCP packet to `port` from `remote` to `dport`:
    /// `"allow"` or `"deny"` (or the error).
    pub fn trace_tcp(&self, bin: &str, port: &str, remote: &str, dport: u16) -> String {
        let o = Command::new(bin)
            .args(["ctl", "--socket"])
            .arg(&self.socket)
            .args(["trace", "--port", port, "--direction", "ingress", "--proto", "tcp", "--remote", remote])
            .args(["--local-port", &dport.to_string(), "--json"])
            .output()
            .expect("ctl trace");
        match serde_json::from_slice::<serde_json::Value>(&o.stdout) {
            Ok(v) => v["verdict"].as_str().unwrap_or("?").to_owned(),
            Err(_) => format!("error: {}", String::from_utf8_lossy(&o.stderr).trim()),
        }
    }

    /// The times (µs since the Unix epoch) this host's log says it put
    /// each store revision in force: `(revision, µs)` in log order.
    pub fn applied(&self) -> Vec<(u64, u64)> {
        let Ok(f) = std::fs::File::open(&self.log) else { return Vec::new() };
        BufReader::new(f).lines().map_while(Result::ok).filter_map(|l| applied_line(&l)).collect()
    }

    /// How long each reload the log reports took to load and compile, in
    /// milliseconds.
    pub fn reload_ms(&self) -> Vec<f64> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter_map(|l| l.split_once("compiled in ")?.1.split_once(" ms")?.0.parse().ok()).collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A log line that puts a generation in force ("running on ... (generation
/// N" or "reloaded (...): generation N"), as `(N, µs since the epoch)`.
pub fn applied_line(l: &str) -> Option<(u64, u64)> {
    let (time, rest) = l.split_once(' ')?;
    let after = match rest.split_once("): generation ") {
        Some((_, a)) => a,
        None if rest.contains(" running on ") => rest.split_once("(generation ")?.1,
        None => return None,
    };
    let g: String = after.chars().take_while(char::is_ascii_digit).collect();
    Some((g.parse().ok()?, parse_rfc3339_us(time)?))
}

/// `2026-12-06T12:43:37.436519Z` as µs since the Unix epoch.
pub fn parse_rfc3339_us(s: &str) -> Option<u64> {
    let s = s.trim().strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let us: i64 = format!("{frac:0<6}")[..6].parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + us).ok()
}

/// A port file: `id`, one IPv4 address, bound to `groups`.
pub fn port_toml(id: &str, ipv4: &str, groups: &[&str]) -> String {
    let gs: Vec<String> = groups.iter().map(|g| format!("\"{g}\"")).collect();
    format!("id = \"{id}\"\nipv4 = [\"{ipv4}\"]\nsecurity_groups = [{}]\n", gs.join(", "))
}

/// Waits until `f` holds, polling every 50 ms; false if it did not within
/// `within`.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    loop {
        if f() {
            return true;
        }
        if t.elapsed() > within {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_times_are_read_as_unix_microseconds() {
        assert_eq!(super::parse_rfc3339_us("1970-01-01T00:00:01.000002Z"), Some(1_000_002));
        assert_eq!(super::parse_rfc3339_us("2026-12-06T12:43:37.436519Z"), Some(1_796_561_017_436_519));
    }
}
