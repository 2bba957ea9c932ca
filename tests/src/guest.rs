//! Real virtual machines for the end-to-end tests (root only): QEMU guests
//! of `scripts/guest.sh`'s image, each with a virtio-net NIC on a tap
//! device of the host, as a cloud host runs them.
//!
//! The guest's `/init` configures the addresses given on its kernel command
//! line, prints `SGGUEST-READY`, then runs each line it reads on its serial
//! console (QEMU's stdio here) as a shell command. [`Guest::sh`] appends an
//! end marker carrying the exit status, and reads the output up to it.
//!
//! Hardware virtualization is used where the host has it (`kvm_intel` or
//! `kvm_amd` loaded and `/dev/kvm`); elsewhere (a host whose `/dev/kvm` is
//! PVM, say, which runs only PVM-built guest kernels) QEMU emulates the CPU
//! (TCG): slower, the same virtio-net device and tap. `SG_GUEST_ACCEL=kvm|tcg`
//! overrides. Where `/dev/vhost-net` exists the tap is served by vhost-net
//! (the kernel moves the guest's frames), else by QEMU's own tap backend; the
//! switch sees the same tap either way.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use crate::netns::root;

/// The guest image (kernel and initramfs), built by `scripts/guest.sh`
/// into `target/guest` unless it is there already.
pub fn image() -> PathBuf {
    let out = Command::new(root().join("scripts/guest.sh")).arg(root().join("target/guest")).output().expect("run scripts/guest.sh");
    assert!(out.status.success(), "scripts/guest.sh: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// How QEMU runs the guests' CPUs: `kvm` or `tcg` (see the module docs).
pub fn accel() -> &'static str {
    match std::env::var("SG_GUEST_ACCEL").as_deref() {
        Ok("kvm") => "kvm",
        Ok("tcg") => "tcg",
        _ => {
            let hw = Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists();
            if hw && Path::new("/dev/kvm").exists() { "kvm" } else { "tcg" }
        }
    }
}

/// Whether taps are served by vhost-net.
pub fn vhost_net() -> bool {
    Path::new("/dev/vhost-net").exists()
}

/// The virtio-net NIC's offloads, all off, as docs/configuration.md ("VM
/// ports on tap") tells operators to start their VMs: the guest finishes
/// its checksums and sends frames no larger than the MTU. With QEMU's
/// defaults it leaves TCP checksums to the host (and segments of 64 KB),
/// which an AF_XDP port receives unfinished (or not at all), and the guest
/// on the other side drops.
pub const NO_OFFLOAD: &str = "csum=off,guest_csum=off,gso=off,host_tso4=off,host_tso6=off,host_ecn=off,host_ufo=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off";

/// One guest's NIC and addresses.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    /// The host's tap device; made by [`Tap::new`] before the guest boots.
    pub tap: String,
    pub mac: String,
    /// `address/prefix`
    pub ipv4: String,
    /// `address/prefix`, or empty
    pub ipv6: String,
    /// The default gateway, or empty.
    pub gateway: String,
    /// The NIC with QEMU's default offloads, as an operator who did not
    /// read docs/configuration.md starts it; else [`NO_OFFLOAD`].
    pub offloads: bool,
    /// A vhost-user NIC on this socket (the switch listens on it) instead
    /// of the tap: the guest's memory is shared (a memfd) for the switch
    /// to map, and QEMU reconnects (within a second) if the switch restarts.
    pub vhost_user: Option<PathBuf>,
}

/// QEMU 7.2 (Debian 12's) crashes under TCG when a vhost-user NIC starts
/// with MSI-X (setting up its vector notifiers, which assume KVM); with
/// legacy interrupts it runs. With KVM, or on tap, the NIC keeps MSI-X.
fn vectors(spec: &Spec) -> &'static str {
    if spec.vhost_user.is_some() && accel() == "tcg" { ",vectors=0" } else { "" }
}

/// A persistent tap device with a virtio-net header, as libvirt makes for
/// a VM; deleted when dropped.
#[derive(Debug)]
pub struct Tap(pub String);

impl Tap {
    pub fn new(name: &str) -> Tap {
        let _ = Command::new("ip").args(["link", "del", name]).stderr(Stdio::null()).status();
        let ok = |args: &[&str]| Command::new("ip").args(args).status().is_ok_and(|s| s.success());
        assert!(ok(&["tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"]), "ip tuntap add {name}");
        assert!(ok(&["link", "set", name, "up"]), "ip link set {name} up");
        // The switch takes every frame; no host stack on the VM's tap.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        Tap(name.to_owned())
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).stderr(Stdio::null()).status();
    }
}

/// A running guest; powered off (killed) when dropped.
#[derive(Debug)]
pub struct Guest {
    pub spec: Spec,
    child: Child,
    console: ChildStdin,
    lines: Receiver<String>,
    /// Everything the console printed, for failure messages.
    seen: Vec<String>,
    commands: u32,
}

impl Guest {
    /// Starts QEMU on `image` for `spec` (its tap must exist). Returns at
    /// once; [`Guest::ready`] waits for the boot.
    pub fn boot(image: &Path, spec: &Spec) -> Guest {
        let mut cmdline = format!("console=ttyS0 quiet panic=-1 sg.ip={}", spec.ipv4);
        if !spec.ipv6.is_empty() {
            cmdline += &format!(" sg.ip6={}", spec.ipv6);
        }
        if !spec.gateway.is_empty() {
            cmdline += &format!(" sg.gw={}", spec.gateway);
        }
        let vhost = if vhost_net() { "on" } else { "off" };
        let accel = accel();
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", accel, "-m", "128", "-smp", "1", "-nodefaults", "-no-user-config", "-no-reboot"])
            .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
            .arg("-kernel")
            .arg(image.join("vmlinuz"))
            .arg("-initrd")
            .arg(image.join("initrd.gz"))
            .args(["-append", &cmdline])
            .args([
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={},{}{}", spec.mac, if spec.offloads { "" } else { NO_OFFLOAD }, vectors(spec)),
            ]);
        match &spec.vhost_user {
            None => cmd.args(["-netdev", &format!("tap,id=n0,ifname={},script=no,downscript=no,vhost={vhost}", spec.tap)]),
            Some(socket) => cmd
                .args(["-object", "memory-backend-memfd,id=mem0,size=128M,share=on", "-machine", "memory-backend=mem0"])
                .args(["-chardev", &format!("socket,id=c0,path={},reconnect=1", socket.display())])
                .args(["-netdev", "vhost-user,id=n0,chardev=c0"]),
        };
        if accel == "kvm" {
            cmd.args(["-cpu", "host"]);
        }
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("start qemu-system-x86_64");
        let console = child.stdin.take().expect("stdin");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line.trim_end_matches('\r').to_owned()).is_err() {
                    break;
                }
            }
        });
        Guest { spec: spec.clone(), child, console, lines, seen: Vec::new(), commands: 0 }
    }

    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(l) => {
                self.seen.push(l.clone());
                Some(l)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Waits until the guest has configured its NIC and reads commands.
    pub fn ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while let Some(l) = self.next_line(deadline) {
            if l.starts_with("SGGUEST-READY") {
                return;
            }
        }
        panic!("guest {} did not boot within {within:?} ({}):\n{}", self.spec.name, accel(), self.seen.join("\n"));
    }

    /// Runs `cmd` in the guest's shell; its exit status and output. Panics
    /// if it does not end within `within`.
    pub fn sh(&mut self, cmd: &str, within: Duration) -> (i32, String) {
        self.commands += 1;
        let marker = format!("SGEND{}", self.commands);
        writeln!(self.console, "{cmd}; echo {marker}=$?").expect("write to the guest console");
        self.console.flush().expect("flush");
        let deadline = Instant::now() + within;
        let mut out = String::new();
        while let Some(l) = self.next_line(deadline) {
            if let Some(rc) = l.strip_prefix(&marker).and_then(|r| r.strip_prefix('=')) {
                return (rc.trim().parse().unwrap_or(-1), out);
            }
            out.push_str(&l);
            out.push('\n');
        }
        panic!("guest {}: `{cmd}` did not end within {within:?}; output so far:\n{out}", self.spec.name);
    }

    /// Starts `cmd` in the background in the guest.
    pub fn spawn(&mut self, cmd: &str) {
        let (rc, out) = self.sh(&format!("({cmd}) >/dev/null 2>&1 & true"), Duration::from_secs(10));
        assert_eq!(rc, 0, "guest {}: starting `{cmd}`: {out}", self.spec.name);
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
