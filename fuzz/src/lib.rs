//! The fuzz targets' cores, as plain functions of the fuzzer's bytes: the
//! libFuzzer binaries (`fuzz/libfuzzer`) call them, and `tests/corpus.rs`
//! runs every file of the corpora (seeds and the crashes found, kept as
//! regression inputs) through them as an ordinary test.
//!
//! - [`pipeline`]: a sequence of operations decoded from the bytes (frames
//!   from the uplink, a port or another loop, clock ticks, reloads) through
//!   one pipeline: no panic, and (the binary checks it with a counting
//!   allocator) no allocation while deciding.
//! - [`config`]: the bytes split into the files of a configuration
//!   directory, loaded: a configuration or errors that each name a file of
//!   the directory, never a panic.
//! - [`capture`]: the bytes as a pcap or pcapng capture, read and replayed:
//!   records or a capture error, never a panic.
//! - [`ctl`]: the bytes as a control-socket request, parsed and, for a
//!   trace, resolved against the examples' policy and probed.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sgswitch::datapath::plan::{Plan, Zones};
use sgswitch::datapath::{Action, Outcome, Source};
pub use sgswitch::packet::Pipeline;
use sgswitch::packet::conntrack_settings;
use sgswitch_conntrack::{FragSettings, Now};

/// The repository's `examples/`.
fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn plan_of(dir: &Path, generation: u32) -> Plan {
    let cfg = sgswitch_config::load_dir(dir).expect("the examples load");
    Plan::build(cfg, &mut Zones::default(), generation).expect("a plan").0
}

/// A copy of the examples with `file`'s text edited by `edit`, as a plan.
fn edited(generation: u32, file: &str, edit: impl Fn(String) -> String) -> Plan {
    let dir = tempfile::tempdir().expect("tempdir");
    copy(&examples_dir(), dir.path());
    let path = dir.path().join(file);
    let text = std::fs::read_to_string(&path).expect("an examples file");
    std::fs::write(&path, edit(text)).expect("write");
    plan_of(dir.path(), generation)
}

/// Two plans of the examples, the second with https closed: what a reload
/// switches between.
pub fn plans() -> &'static (Plan, Plan) {
    static PLANS: OnceLock<(Plan, Plan)> = OnceLock::new();
    PLANS.get_or_init(|| {
        let first = plan_of(&examples_dir(), 1);
        let second = edited(2, "groups/sg-web.toml", |t| t.replace("ports = \"443/443\"", "ports = \"4443/4443\""));
        (first, second)
    })
}

/// The examples with a connection capacity of 4,096 flows: `replay` makes
/// its table anew for each capture, and a full-size one would be most of
/// each run.
fn small_plan() -> &'static Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    PLAN.get_or_init(|| {
        edited(1, "host.toml", |t| {
            t.replace("capacity = 1048576", "capacity = 4096").replace("per_port_capacity = 65536", "per_port_capacity = 4096")
        })
    })
}

fn copy(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// A pipeline for [`pipeline`], made once per process (tables allocated
/// up front, as a poll loop's are).
pub fn new_pipeline() -> Pipeline<u32> {
    let (first, _) = plans();
    let mut settings = conntrack_settings(&first.policy().config().host, 0x5eed);
    settings.capacity = 4096;
    settings.per_zone_capacity = 1024;
    let mut p = Pipeline::new(settings, FragSettings { datagrams: 64, held: 16, hold_ms: 100, datagram_ms: 30_000 });
    p.set_flow_cache(1024);
    p.adopt(first);
    p.adopt(&plans().1);
    p.adopt(first);
    p
}

/// What [`pipeline`] did, for the binary's checks.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ran {
    pub frames: usize,
    pub forwarded: usize,
}

/// Runs the operations `data` spells through `pipe`: each is an op byte
/// and a length byte, then (for frames) that many bytes. Op & 7: 0 a frame
/// from the uplink, 1 from port (op >> 3) % 8, 2 from another loop for port
/// (op >> 3) % 8, 3 a batch of the frame from the uplink four times, 4 a
/// clock tick of `len` ms, 5 a reload to the other plan, 6 and 7 a frame
/// from the uplink. Never panics; `pipe` must come from [`new_pipeline`]
/// (and so adopt plans already made).
pub fn pipeline(pipe: &mut Pipeline<u32>, data: &[u8]) -> Ran {
    let (a, b) = plans();
    let mut plan = a;
    let mut now = 1_000u64;
    let mut ran = Ran::default();
    let mut out = [Outcome {
        action: Action::Drop,
        reason: sgswitch::datapath::Reason::Default,
        port: None,
        direction: sgswitch_config::Direction::Ingress,
    }; 4];
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (frame, after) = tail.split_at(n);
        let port = u16::from(op >> 3) % 8;
        match op & 7 {
            1 | 2 => {
                let src = if op & 7 == 1 { Source::Port(port) } else { Source::Peer(port) };
                let o = pipe.process(plan, src, frame, Now(now), 0);
                ran.frames += 1;
                ran.forwarded += usize::from(matches!(o.action, Action::Forward(_)));
            }
            3 => {
                let items = [(Source::Uplink, frame, 0u32); 4];
                pipe.process_batch(plan, &items, Now(now), &mut out);
                ran.frames += 4;
                ran.forwarded += out.iter().filter(|o| matches!(o.action, Action::Forward(_))).count();
            }
            4 => {
                now += u64::from(*len);
                pipe.tick(plan, Now(now));
            }
            5 => {
                plan = if std::ptr::eq(plan, a) { b } else { a };
                pipe.adopt(plan);
            }
            _ => {
                let o = pipe.process(plan, Source::Uplink, frame, Now(now), 0);
                ran.frames += 1;
                ran.forwarded += usize::from(matches!(o.action, Action::Forward(_)));
            }
        }
        for _ in pipe.take_released() {}
        rest = if op & 7 == 4 || op & 7 == 5 { tail } else { after };
    }
    ran
}

/// How many reloads the operations of `data` hold: a reload allocates
/// (once per reload, by design), nothing else does.
pub fn reloads(data: &[u8]) -> usize {
    let mut n = 0;
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        rest = match op & 7 {
            4 => tail,
            5 => {
                n += 1;
                tail
            }
            _ => &tail[usize::from(*len).min(tail.len())..],
        };
    }
    n
}

/// The files a configuration fuzz input is split into, at 0xff bytes.
pub const CONFIG_FILES: [&str; 4] = ["host.toml", "ports/eni-a.toml", "groups/sg-a.toml", "prefix-lists/pl-a.toml"];

/// Loads the directory `data` spells ([`CONFIG_FILES`], split at 0xff
/// bytes) from a folder under `scratch`: a configuration, or errors each of
/// which names a file of the directory. Panics only if that is not so.
pub fn config(data: &[u8], scratch: &Path) {
    let dir = scratch.join("cfg");
    let _ = std::fs::remove_dir_all(&dir);
    for (name, bytes) in CONFIG_FILES.iter().zip(data.split(|&b| b == 0xff)) {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().expect("a folder")).expect("mkdir");
        std::fs::write(&p, bytes).expect("write");
    }
    std::fs::create_dir_all(&dir).expect("mkdir");
    if let Err(errs) = sgswitch_config::load_dir(&dir) {
        assert!(!errs.0.is_empty(), "an error without a message");
        for e in &errs.0 {
            assert!(e.file.starts_with(&dir), "an error that names no file of the directory: {e}");
            assert!(!e.msg.is_empty(), "an error without a message: {e:?}");
        }
    }
}

/// Reads `data` as a capture and replays it against the examples: never
/// panics. Returns how many records were replayed.
pub fn capture(data: &[u8]) -> usize {
    let path = Path::new("fuzz-input.pcap");
    let Ok(mut reader) = sgswitch::port::capture::Reader::new(path, std::io::Cursor::new(data)) else { return 0 };
    let plan = small_plan();
    let mut lines = 0;
    let r = sgswitch::tools::replay::replay(
        plan,
        &mut reader,
        path,
        7,
        |_, _| {
            lines += 1;
            Ok(())
        },
        |_, _| Ok(()),
    );
    r.map_or(lines, |s| s.packets)
}

/// Parses `data` as a control-socket request; a trace is resolved against
/// the examples' policy and run through a probe pipeline: never panics.
pub fn ctl(data: &[u8]) {
    let Ok(req) = serde_json::from_slice::<sgswitch::ops::control::CtlRequest>(data) else { return };
    if let sgswitch::ops::control::CtlRequest::Trace { request } = req {
        let (plan, _) = plans();
        if let Ok((port, pkt)) = sgswitch::tools::request::resolve(plan.policy(), &request) {
            let decision = plan.compiled.decide(port, &pkt);
            if let Ok(p) = u16::try_from(port) {
                let mut probe = sgswitch::tools::probe::pipeline(plan);
                let _ = sgswitch::tools::probe::datapath(&mut probe, plan, p, &pkt, &decision);
            }
        }
    }
}
