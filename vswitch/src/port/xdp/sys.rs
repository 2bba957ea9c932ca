//! What the AF_XDP port needs of the system beyond its sockets: waiting
//! for frames, busy polling and the interface settings it needs, the
//! queues and index of an interface, claiming interfaces against other
//! switches and removing what a dead one left, link events, the open-file
//! limit, and quieting libbpf and libxdp.
#![allow(unsafe_code, reason = "libc and libxdp calls; each says why it holds")]

use std::os::fd::AsRawFd;
use std::path::Path;

use crate::port::PortError;

/// Waits until one of the sockets whose descriptors `fds` holds (from
/// [`crate::port::Rings::poll_fd`]) has received frames, or `timeout` passes: how an
/// idle poll loop sleeps without `busy_poll`. A fixed sleep oversleeps on a
/// loaded host (a 200 us sleep measured up to 4 ms here) while the fill ring
/// runs dry; this returns as soon as the kernel queues a frame.
pub fn wait_for_frames(fds: &mut [libc::pollfd], timeout: std::time::Duration) {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
    };
    let n = libc::nfds_t::try_from(fds.len()).unwrap_or(libc::nfds_t::MAX);
    // SAFETY: `fds` is a valid array of `n` pollfd structs the kernel may
    // write `revents` into; `ts` outlives the call; no signal mask is
    // changed (null). An error (EINTR) just ends the wait early.
    let _ = unsafe { libc::ppoll(fds.as_mut_ptr(), n, &raw const ts, std::ptr::null()) };
}

/// A non-blocking `eventfd`: what wakes a poll loop sleeping in
/// [`wait_for_frames`] when another thread has work for it.
///
/// # Errors
/// The kernel's (out of descriptors).
pub fn eventfd() -> std::io::Result<std::os::fd::OwnedFd> {
    // SAFETY: eventfd takes no pointers; a non-negative result is a new
    // descriptor this process owns, handed to OwnedFd once.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: see above.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd's counter (never blocks: it is non-blocking, and
/// a counter that would overflow is already readable).
pub fn eventfd_ring(fd: &std::os::fd::OwnedFd) {
    let one = 1u64;
    // SAFETY: writes the 8 bytes of `one`, which outlives the call, to a
    // descriptor this process owns.
    let _ = unsafe { libc::write(fd.as_raw_fd(), (&raw const one).cast(), 8) };
}

/// Reads an eventfd's counter back to zero (nothing if it is zero).
pub fn eventfd_drain(fd: &std::os::fd::OwnedFd) {
    let mut n = 0u64;
    // SAFETY: reads at most 8 bytes into `n`, which outlives the call,
    // from a non-blocking descriptor this process owns.
    let _ = unsafe { libc::read(fd.as_raw_fd(), (&raw mut n).cast(), 8) };
}

const SO_BUSY_POLL: libc::c_int = 46;
const SO_INCOMING_NAPI_ID: libc::c_int = 56;
const SO_PREFER_BUSY_POLL: libc::c_int = 69;
const SO_BUSY_POLL_BUDGET: libc::c_int = 70;
const SOL_XDP: libc::c_int = 283;
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;

fn set_int(fd: libc::c_int, level: libc::c_int, name: libc::c_int, value: u32) -> std::io::Result<()> {
    let v = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: `v` is a valid int of `len` bytes that outlives the call;
    // setsockopt only reads it.
    if unsafe { libc::setsockopt(fd, level, name, (&raw const v).cast(), len) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sets the socket options of preferred busy polling on an AF_XDP socket
/// (`SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL`, `SO_BUSY_POLL_BUDGET`). The
/// interface is tuned ([`tune`]) once the kernel names the queue's NAPI
/// context.
///
/// # Errors
/// What the kernel refused, in words.
pub fn busy_poll(fd: libc::c_int, b: &crate::port::xdp::BusyPoll) -> Result<(), String> {
    let opt = |name: libc::c_int, what: &str, v: u32| set_int(fd, libc::SOL_SOCKET, name, v).map_err(|e| format!("{what}: {e}"));
    opt(SO_PREFER_BUSY_POLL, "SO_PREFER_BUSY_POLL", 1)?;
    // Any non-zero value: the loop's polls do not block, so the kernel
    // polls once per call whatever the time.
    opt(SO_BUSY_POLL, "SO_BUSY_POLL", 20)?;
    opt(SO_BUSY_POLL_BUDGET, "SO_BUSY_POLL_BUDGET", b.budget)
}

/// Raises how many frames one `sendto` transmits in copy mode
/// (`XDP_MAX_TX_SKB_BUDGET`, Linux 6.17) to `ring`; returns the budget in
/// force (32, the kernel's fixed one, where the option is missing).
pub fn tx_budget(fd: libc::c_int, ring: u32) -> u32 {
    if set_int(fd, SOL_XDP, XDP_MAX_TX_SKB_BUDGET, ring).is_ok() { ring } else { 32 }
}

/// One busy poll of a socket's queue: a non-blocking `recvfrom` of
/// nothing, which the kernel answers by polling the queue's NAPI context.
#[inline]
pub fn poke(fd: libc::c_int) {
    // SAFETY: a zero-length receive into no buffer; nothing is written.
    let _ = unsafe { libc::recvfrom(fd, std::ptr::null_mut(), 0, libc::MSG_DONTWAIT, std::ptr::null_mut(), std::ptr::null_mut()) };
}

/// The NAPI id the kernel recorded for a socket's queue (0: none yet).
pub fn napi_id(fd: libc::c_int) -> u32 {
    let mut v: u32 = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<u32>()).unwrap_or(4);
    // SAFETY: the kernel writes at most `len` bytes into `v`.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, SO_INCOMING_NAPI_ID, (&raw mut v).cast(), &raw mut len) };
    if rc == 0 { v } else { 0 }
}

/// An interface whose NAPI settings this process changed: its index then,
/// the sockets using the change, and the values before it.
#[derive(Debug)]
struct Tuning {
    interface: String,
    ifindex: u32,
    users: usize,
    saved: [String; 3],
}

static TUNINGS: std::sync::Mutex<Vec<Tuning>> = std::sync::Mutex::new(Vec::new());

/// The interface settings busy polling needs: deferred interrupts with a
/// timeout, so that the kernel leaves the queue to the loop, and no NAPI
/// kthread (`threaded`), which the deferral timer would wake to poll the
/// queue in the loop's place: measured on veth, a threaded NAPI context
/// busy-polled delivered 0.39-0.48 Mpps in overload where the loop alone
/// delivered 0.98.
const NAPI_FILES: [&str; 3] = ["napi_defer_hard_irqs", "gro_flush_timeout", "threaded"];

fn napi_path(interface: &str, file: &str) -> std::path::PathBuf {
    Path::new("/sys/class/net").join(interface).join(file)
}

/// A socket's hold on its interface's NAPI settings ([`busy_poll`]).
#[derive(Debug)]
pub struct Tuned {
    interface: String,
}

/// Tunes `interface` for a busy-polled socket: `napi_defer_hard_irqs` and
/// `gro_flush_timeout`, which keep the kernel from polling the queue itself
/// while the loop does (it polls once `gro_flush_timeout` passes without
/// the loop), and no NAPI kthread. The settings are restored when the
/// returned guard of the interface's last busy-polled socket is dropped.
///
/// # Errors
/// A setting could not be read or written.
pub fn tune(interface: &str, defer: u32, timeout_ns: u64) -> Result<Tuned, String> {
    let mut all = TUNINGS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let index = ifindex(interface);
    if let Some(t) = all.iter_mut().find(|t| t.interface == interface && t.ifindex == index) {
        t.users += 1;
        return Ok(Tuned { interface: interface.to_owned() });
    }
    // An entry for an interface of the same name that is gone: its
    // settings went with it.
    all.retain(|t| t.interface != interface);
    let read =
        |f: &str| std::fs::read_to_string(napi_path(interface, f)).map(|v| v.trim().to_owned()).map_err(|e| format!("reading {f}: {e}"));
    let saved = [read(NAPI_FILES[0])?, read(NAPI_FILES[1])?, read(NAPI_FILES[2])?];
    // Recorded before they change, so that a switch killed before it can
    // restore them has them restored by the next one (`claim`).
    save_for_next(interface, &saved);
    let write = |f: &str, v: String| std::fs::write(napi_path(interface, f), v).map_err(|e| format!("setting {f}: {e}"));
    write(NAPI_FILES[0], defer.to_string())
        .and_then(|()| write(NAPI_FILES[1], timeout_ns.to_string()))
        .and_then(|()| if saved[2] == "0" { Ok(()) } else { write(NAPI_FILES[2], "0".to_owned()) })
        .inspect_err(|_| restore(interface, &saved))?;
    if saved[2] != "0" {
        tracing::info!("{interface}: threaded NAPI off while busy-polled (it was {}; restored when the switch lets go)", saved[2]);
    }
    all.push(Tuning { interface: interface.to_owned(), ifindex: index, users: 1, saved });
    Ok(Tuned { interface: interface.to_owned() })
}

fn restore(interface: &str, saved: &[String; 3]) {
    for (f, v) in NAPI_FILES.iter().zip(saved) {
        let _ = std::fs::write(napi_path(interface, f), v);
    }
    save_for_next(interface, &[String::new(), String::new(), String::new()]);
}

impl Drop for Tuned {
    fn drop(&mut self) {
        let mut all = TUNINGS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(at) = all.iter().position(|t| t.interface == self.interface) else { return };
        all[at].users -= 1;
        if all[at].users == 0 {
            let t = all.swap_remove(at);
            // Only the interface the settings were changed on: one made
            // anew under the name has its own.
            if ifindex(&t.interface) == t.ifindex {
                restore(&t.interface, &t.saved);
            }
        }
    }
}

/// Writes the settings to restore into the interface's lock file (empty:
/// nothing to restore).
fn save_for_next(interface: &str, saved: &[String; 3]) {
    let text = if saved[0].is_empty() { String::new() } else { NAPI_FILES.iter().zip(saved).map(|(f, v)| format!("{f}={v}\n")).collect() };
    let _ = std::fs::write(lock_path(interface), text);
}

/// Restores the NAPI settings a dead switch recorded in `interface`'s lock
/// file; returns what was restored.
fn restore_left(interface: &str) -> Option<String> {
    let text = std::fs::read_to_string(lock_path(interface)).ok()?;
    let mut saved = [String::new(), String::new(), String::new()];
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=')
            && let Some(i) = NAPI_FILES.iter().position(|f| *f == k)
        {
            v.trim().clone_into(&mut saved[i]);
        }
    }
    if saved.iter().any(String::is_empty) {
        return None;
    }
    restore(interface, &saved);
    Some(format!(
        "{interface}: restored napi_defer_hard_irqs={}, gro_flush_timeout={} and threaded={} that a previous sgswitch had changed",
        saved[0], saved[1], saved[2]
    ))
}

/// The receive queues of `interface` (`/sys/class/net/<if>/queues/rx-*`),
/// at least one.
pub fn rx_queues(interface: &str) -> u32 {
    let dir = Path::new("/sys/class/net").join(interface).join("queues");
    let n = std::fs::read_dir(dir)
        .map_or(0, |d| d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().starts_with("rx-")).count());
    u32::try_from(n).unwrap_or(1).max(1)
}

/// Where the switch keeps one lock file per interface it uses.
const LOCK_DIR: &str = "/run/sgswitch/interfaces";

/// The lock file of `interface`: its name, in the host's network
/// namespace; in another, the namespace's inode and the name (an interface
/// name is the namespace's own).
fn lock_path(interface: &str) -> std::path::PathBuf {
    let ns = |p: &str| std::fs::read_link(p).ok();
    let here = ns("/proc/self/ns/net");
    let name = match here.as_ref().and_then(|h| h.to_str()).and_then(|h| h.strip_prefix("net:[")?.strip_suffix(']')) {
        Some(inode) if here != ns("/proc/1/ns/net") => format!("netns-{inode}-{interface}"),
        _ => interface.to_owned(),
    };
    Path::new(LOCK_DIR).join(name)
}

/// The interfaces this process has claimed, with their locked files.
static CLAIMED: std::sync::Mutex<Vec<(String, std::fs::File)>> = std::sync::Mutex::new(Vec::new());

/// Claims `interface` for this process: an exclusive `flock` on its lock
/// file under `/run/sgswitch/interfaces`, held until the process ends (the kernel drops
/// it even after SIGKILL); a second switch on the interface is refused
/// here, before it touches the interface. Claimed first, an interface has
/// no live sgswitch on it, so busy-poll settings a dead one recorded are
/// restored. `Ok(true)` when newly claimed.
///
/// # Errors
/// Another running sgswitch holds the interface, or the lock file cannot
/// be made.
pub fn claim(interface: &str) -> Result<bool, PortError> {
    let mut claimed = CLAIMED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if claimed.iter().any(|(n, _)| n == interface) {
        return Ok(false);
    }
    let path = lock_path(interface);
    let lock = path.display().to_string();
    let err = |e: &dyn std::fmt::Display| PortError::Lock { iface: interface.to_owned(), lock: lock.clone(), what: e.to_string() };
    std::fs::create_dir_all(LOCK_DIR).map_err(|e| err(&e))?;
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| err(&e))?;
    // SAFETY: `f` is an open file; flock changes no memory.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(PortError::Busy { iface: interface.to_owned(), lock });
    }
    claimed.push((interface.to_owned(), f));
    if let Some(restored) = restore_left(interface) {
        tracing::warn!("{restored}");
    }
    Ok(true)
}

/// Whether `interface` is a tap (or tun) device: the tun driver gives its
/// devices a `tun_flags` attribute.
pub fn is_tap(interface: &str) -> bool {
    Path::new("/sys/class/net").join(interface).join("tun_flags").exists()
}

/// Raises the soft limit on open files to the hard limit: sockets, the
/// metrics endpoint's clients and the control socket's share it, and the
/// default of 1,024 is what a handful of idle clients used to exhaust.
/// Returns the limit in force.
pub fn raise_open_files() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `r` is a valid rlimit the kernel writes; RLIMIT_NOFILE is a
    // valid resource.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut r) } != 0 {
        return 0;
    }
    if r.rlim_cur < r.rlim_max {
        let raised = libc::rlimit { rlim_cur: r.rlim_max, rlim_max: r.rlim_max };
        // SAFETY: as above; the new soft limit is the hard one, which an
        // unprivileged process may set too.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    r.rlim_cur
}

/// The index of interface `name`, 0 if there is none.
pub fn ifindex(name: &str) -> u32 {
    let Ok(c) = std::ffi::CString::new(name) else { return 0 };
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// Counts the kernel's link events (an interface made, deleted, or its
/// state changed: `RTM_NEWLINK`/`RTM_DELLINK` on an `rtnetlink` socket
/// subscribed to `RTMGRP_LINK`) into `events` until `stop`, and calls
/// `prompt` on each (which wakes the poll loops): they look at their
/// interfaces again when it moves. The events are only a
/// prompt (the loops read the interfaces themselves), so nothing of them is
/// parsed. Sleeps until an event comes or `stop` is set.
/// Returns at once, with the reason, if the socket cannot be made.
///
/// # Errors
/// The netlink socket cannot be opened or bound.
pub fn watch_links(stop: &crate::port::halt::Halt, events: &std::sync::atomic::AtomicU64, prompt: &dyn Fn()) -> Result<(), PortError> {
    use std::sync::atomic::Ordering;
    const RTMGRP_LINK: u32 = 1;
    // SAFETY: a plain socket call; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(PortError::Sys { call: "socket(AF_NETLINK)", what: std::io::Error::last_os_error().to_string() });
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_nl is valid; the fields are set below.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::sa_family_t::try_from(libc::AF_NETLINK).unwrap_or(16);
    addr.nl_groups = RTMGRP_LINK;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_nl>()).unwrap_or(12);
    // SAFETY: `addr` is a valid sockaddr_nl of `len` bytes.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) } != 0 {
        return Err(PortError::Sys { call: "bind(AF_NETLINK, RTMGRP_LINK)", what: std::io::Error::last_os_error().to_string() });
    }
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.is_set() {
        if !stop.wait_readable(fd.as_raw_fd()) {
            continue;
        }
        // SAFETY: `buf` is a valid buffer of its length for the kernel.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n > 0 {
            events.fetch_add(1, Ordering::Relaxed);
            prompt();
        } else if n < 0 {
            let e = std::io::Error::last_os_error();
            // An overrun lost events, which is itself a prompt to look.
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                events.fetch_add(1, Ordering::Relaxed);
                prompt();
            }
        }
    }
    Ok(())
}

/// Silences libbpf's and libxdp's own messages on stderr (ELF section
/// notices, the bpffs fallback): the switch reports what failed itself.
pub fn quiet_libraries() {
    // SAFETY: setting the print callbacks to none; called before any
    // socket is created.
    unsafe {
        libxdp_sys::libxdp_set_print(None);
        libbpf_set_print(std::ptr::null());
    }
}

unsafe extern "C" {
    /// libbpf (linked in through libxdp-sys): `libbpf_print_fn_t
    /// libbpf_set_print(libbpf_print_fn_t fn)`; null silences it.
    fn libbpf_set_print(f: *const libc::c_void) -> *const libc::c_void;
}

/// Restricts this thread, and the threads it starts from then on, to
/// `cores` (`core_affinity` sets one core only).
fn set_allowed_cores(cores: &[usize]) -> std::io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let all = usize::try_from(libc::CPU_SETSIZE).unwrap_or(0);
    for &c in cores.iter().filter(|&&c| c < all) {
        // SAFETY: CPU_SET writes `set`, a valid cpu_set_t, at a bit below
        // CPU_SETSIZE.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size given; the call
    // changes this thread's mask only.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The cores [`keep_helpers_on`] gave the switch's threads other than the
/// loops.
static HELPERS: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();

/// Restricts this thread, and the threads it starts from then on, to
/// `cores`, and remembers them for the threads a loop starts
/// ([`join_helpers`]).
///
/// # Errors
/// The kernel's (a core the process may not use, none at all).
pub fn keep_helpers_on(cores: &[usize]) -> std::io::Result<()> {
    set_allowed_cores(cores)?;
    let _ = HELPERS.set(cores.to_vec());
    Ok(())
}

/// Moves this thread, started by a poll loop (and so pinned to its core),
/// to the cores of the switch's other threads, if they were placed.
pub fn join_helpers() {
    if let Some(cores) = HELPERS.get() {
        let _ = set_allowed_cores(cores);
    }
}
