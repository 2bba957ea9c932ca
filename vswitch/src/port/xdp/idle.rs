//! What the poll loops' cores do when nothing on them has work
//! (`[datapath] core_idle`).
//!
//! A loop that finds no frames waits in `ppoll`, and a NAPI thread that
//! yields to it (`engine/napi.rs`) sleeps until its interface has frames:
//! the core goes idle, and an idle core halts. The next frame then waits
//! for the core to wake: on a virtual machine, for the hypervisor to run
//! the vCPU again. Measured on this machine's guest (the bench's latency
//! point at half the peak, sgswitch and the bare XDP redirect alternated,
//! `docs/bench/README.md`), a polling core halved the median latency, 10-12
//! µs to 5-6, and lowered the 99th percentile.
//!
//! So the switch asks the kernel to keep each loop's core in its polling
//! idle state: a resume latency of 0 on the core
//! (`/sys/devices/system/cpu/cpuN/power/pm_qos_resume_latency_us` = `n/a`),
//! which every cpuidle governor honours by polling. Polling idle still
//! gives the core to any task that wakes, at once and without an
//! interrupt; what it costs is the core's power (and, on a virtual
//! machine, its vCPU's host time), as a DPDK or VPP poll-mode core does.
//! A core without a polling idle state (no cpuidle driver, or one without
//! `POLL`) halts as before, and the log and `sgswitch_loop_core_idle_info`
//! say why.
//!
//! On a virtual machine the default (`auto`) leaves the cores alone: its
//! host places the vCPUs by how busy they are, and measured here one that
//! never idled was placed apart from its sibling more often (a cache
//! line's round trip 340 ns instead of 60), where the port path loses a
//! third of its rate (`docs/bench/README.md`, 2026-12-07, night). `poll`
//! asks for polling anyway.
//!
//! The setting is the core's, and several switches may share a core (one
//! per network namespace, say): each holds a shared `flock` on the core's
//! record under `/run/sgswitch/cores` while it keeps the core polling, the
//! first one records the value it found there, and the last one to let go
//! puts it back. A switch killed before it lets go leaves the record with
//! no lock on it: the next switch to look at the core puts the value back
//! (whatever its own `core_idle`). Each change is made holding the core's
//! turn (an exclusive `flock` on a second file), so two switches starting
//! or stopping together see each other.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use sgswitch_config::CoreIdle;

/// Where the switch keeps one record per core it keeps polling.
const DIR: &str = "/run/sgswitch/cores";

/// The resume latency that asks for the polling idle state (0 µs).
const POLL: &str = "n/a";

/// What a loop's core does when idle, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idle {
    pub polls: bool,
    pub why: String,
}

/// The cores this switch keeps polling; each is put back as it was when
/// the last switch keeping it polling lets go (on drop).
#[derive(Debug)]
pub struct Polling {
    held: Vec<(usize, File)>,
}

fn qos_path(core: usize) -> PathBuf {
    PathBuf::from(format!("/sys/devices/system/cpu/cpu{core}/power/pm_qos_resume_latency_us"))
}

fn record_path(core: usize) -> PathBuf {
    Path::new(DIR).join(format!("cpu{core}"))
}

/// `flock(fd, op)`; whether it was granted.
fn flock(f: &File, op: libc::c_int) -> bool {
    // SAFETY: `f` is an open file; flock changes no memory.
    unsafe { libc::flock(f.as_raw_fd(), op) == 0 }
}

/// The core's turn: held while a switch changes the core's setting or its
/// record (released when dropped, with the file).
fn turn(core: usize) -> Result<File, String> {
    let path = Path::new(DIR).join(format!("cpu{core}.lock"));
    let f =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if flock(&f, libc::LOCK_EX) { Ok(f) } else { Err(format!("{}: {}", path.display(), std::io::Error::last_os_error())) }
}

/// The value a switch recorded to put back, if any.
fn recorded(record: &mut File) -> Option<String> {
    let mut text = String::new();
    record.rewind().ok()?;
    record.read_to_string(&mut text).ok()?;
    text.lines().find_map(|l| l.strip_prefix("pm_qos_resume_latency_us=")).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// Replaces the record with `value` to put back (`None`: nothing).
fn record(record: &mut File, value: Option<&str>) -> std::io::Result<()> {
    record.set_len(0)?;
    record.rewind()?;
    if let Some(v) = value {
        writeln!(record, "pm_qos_resume_latency_us={v}")?;
    }
    Ok(())
}

fn set(core: usize, value: &str) -> Result<(), String> {
    std::fs::write(qos_path(core), value).map_err(|e| format!("setting {}: {e}", qos_path(core).display()))
}

/// Why `core` halts when idle whatever its resume latency: `None` when its
/// first idle state is the kernel's polling one.
fn halts_anyway(core: usize) -> Option<String> {
    let cpu = PathBuf::from(format!("/sys/devices/system/cpu/cpu{core}"));
    let driver = std::fs::read_to_string("/sys/devices/system/cpu/cpuidle/current_driver").map(|d| d.trim().to_owned());
    match std::fs::read_to_string(cpu.join("cpuidle/state0/name")) {
        Ok(name) if name.trim() == "POLL" => None,
        Ok(name) => Some(format!(
            "its cpuidle driver ({}) has no polling state (the first is {}): it halts when idle",
            driver.unwrap_or_default(),
            name.trim()
        )),
        Err(_) => {
            Some("the kernel has no cpuidle driver for it: it halts when idle (the kernel parameter idle=poll keeps it polling)".into())
        }
    }
}

/// Puts back the value a killed switch recorded for `core`, when no live
/// switch keeps the core polling (`alone`, holding `users` exclusively);
/// says what it put back.
fn put_back_left(core: usize, users: &mut File) -> Option<String> {
    let value = recorded(users)?;
    set(core, &value).ok()?;
    let _ = record(users, None);
    Some(value)
}

/// Whether this kernel runs under a hypervisor (x86's `hypervisor` CPU
/// flag).
fn in_a_vm() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .is_ok_and(|t| t.lines().filter(|l| l.starts_with("flags")).any(|l| l.split_whitespace().any(|f| f == "hypervisor")))
}

/// Why `core_idle = "auto"` leaves the cores alone on a virtual machine.
const AUTO_IN_A_VM: &str = "core_idle = \"auto\" on a virtual machine: its idle states are the kernel's (the host places a \
                            vCPU that never idles apart from its sibling more often; \"poll\" asks for polling anyway)";

/// Why `core_idle = "leave"` leaves them alone.
const LEAVE: &str = "core_idle = \"leave\": its idle states are the kernel's";

/// Keeps `core` polling when idle, for `mode` (`Auto` resolved): the
/// record held (shared) while it does, and what the core does.
fn keep(core: usize, mode: CoreIdle) -> Result<(Option<File>, Idle), String> {
    std::fs::create_dir_all(DIR).map_err(|e| format!("{DIR}: {e}"))?;
    let _turn = turn(core)?;
    let path = record_path(core);
    let mut users = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // No switch keeps the core polling now: a record is a killed one's.
    let alone = flock(&users, libc::LOCK_EX | libc::LOCK_NB);
    if alone && let Some(v) = put_back_left(core, &mut users) {
        tracing::warn!("core {core}: restored pm_qos_resume_latency_us={v} that a previous sgswitch had changed");
    }
    match mode {
        CoreIdle::Leave => return Ok((None, Idle { polls: false, why: LEAVE.into() })),
        CoreIdle::Auto => return Ok((None, Idle { polls: false, why: AUTO_IN_A_VM.into() })),
        CoreIdle::Poll => {}
    }
    if let Some(why) = halts_anyway(core) {
        return Ok((None, Idle { polls: false, why }));
    }
    let why = if alone {
        let was = std::fs::read_to_string(qos_path(core))
            .map(|v| v.trim().to_owned())
            .map_err(|e| format!("reading {}: {e}", qos_path(core).display()))?;
        // Recorded before it changes, for the next switch should this one
        // be killed.
        record(&mut users, Some(&was)).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Err(e) = set(core, POLL) {
            let _ = record(&mut users, None);
            return Err(e);
        }
        format!("polls when idle (pm_qos_resume_latency_us = {POLL}; it was {was}, restored at exit)")
    } else {
        format!("polls when idle (pm_qos_resume_latency_us = {POLL}, kept by another sgswitch too)")
    };
    if !flock(&users, libc::LOCK_SH) {
        return Err(format!("{}: {}", path.display(), std::io::Error::last_os_error()));
    }
    Ok((Some(users), Idle { polls: true, why }))
}

/// Keeps each of `cores` polling when idle (`mode` = `Poll`, or `Auto`
/// on bare metal), or leaves them to the kernel; puts back what a killed
/// switch left either way.
/// Returns the hold, dropped at exit, and what each core does, in order.
/// A core that cannot be kept polling (no permission, no such setting)
/// halts as before: that is logged, not an error.
pub fn keep_polling(cores: &[usize], mode: CoreIdle) -> (Polling, Vec<Idle>) {
    let mode = if mode == CoreIdle::Auto && !in_a_vm() { CoreIdle::Poll } else { mode };
    let mut held = Vec::new();
    let mut idle = Vec::with_capacity(cores.len());
    for &core in cores {
        match keep(core, mode) {
            Ok((hold, i)) => {
                if i.polls || mode == CoreIdle::Auto {
                    tracing::info!("core {core}: {}", i.why);
                } else if mode == CoreIdle::Poll {
                    tracing::warn!("core {core} halts when idle: {}; a frame that comes then waits for it to wake", i.why);
                }
                held.extend(hold.map(|h| (core, h)));
                idle.push(i);
            }
            Err(e) if mode == CoreIdle::Poll => {
                tracing::warn!("core {core} halts when idle: cannot keep it polling ({e}); a frame that comes then waits for it to wake");
                idle.push(Idle { polls: false, why: format!("cannot keep it polling: {e}") });
            }
            Err(e) => {
                // Left to the kernel anyway; only the look for what a
                // killed switch left failed.
                tracing::warn!("core {core}: cannot look for an idle setting a killed sgswitch left ({e})");
                let why = if mode == CoreIdle::Auto { AUTO_IN_A_VM } else { LEAVE };
                idle.push(Idle { polls: false, why: why.into() });
            }
        }
    }
    (Polling { held }, idle)
}

impl Drop for Polling {
    fn drop(&mut self) {
        for (core, mut users) in self.held.drain(..) {
            let turn = turn(core);
            // The last switch keeping the core polling puts it back.
            if flock(&users, libc::LOCK_UN) && flock(&users, libc::LOCK_EX | libc::LOCK_NB) {
                put_back_left(core, &mut users);
            }
            drop(users);
            drop(turn);
        }
    }
}
