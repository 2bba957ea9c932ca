//! `sgswitch replay`: the whole pipeline over a capture, in order, with the
//! capture's timestamps as the clock.
//!
//! # Where a frame came in
//! In a pcapng capture, the interface description a packet block names
//! says where the frame came in: its `if_name` is a port's `interface` (the
//! frame is that port's egress) or the uplink's (the pipeline finds the
//! port by destination MAC, else by destination IP); every check then runs
//! as in `run`, the source MAC check included. A name that is neither is an
//! error. An interface without a name, and every frame of a plain pcap
//! capture, is inferred from the source MAC: egress of the port whose MAC
//! it is, else uplink traffic.
//!
//! # Streaming
//! Records are read one at a time ([`crate::port::capture`]). Lines come out in
//! capture order: a fragment held for its first fragment is reported when
//! it is decided, and the outcomes after it wait in a queue (a few words
//! each) until then, at most the hold time (100 ms) of capture time. Frames
//! the switch forwards go to `--out` as they are decided, in the order the
//! switch would send them (a held fragment after the first fragment that
//! frees it). Memory is bounded by the largest record and the capture's
//! rate over the hold time, not by its size.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::time::Duration;

use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use sgswitch_conntrack::{FragSettings, Now};
use sgswitch_filter::Policy;

use crate::datapath::plan::Plan;
use crate::datapath::{Action, Outcome, Reason, Source, To};
use crate::packet::Pipeline;
use crate::port::capture::{CaptureError, Reader};

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(
        "{path}: interface \"{name}\" is neither a port's interface nor the uplink's ({known}): name the capture's interfaces as host.toml and the port files do"
    )]
    UnknownInterface { path: String, name: String, known: String },
    /// An [`ReplayError::UnknownInterface`] met by a frame, as text.
    #[error("{0}")]
    Interface(String),
    /// The connection table would not fit in memory.
    #[error(transparent)]
    Memory(#[from] crate::control::sizing::MemoryError),
    #[error("writing the output: {0}")]
    Output(#[source] std::io::Error),
}

/// How a replay ended.
#[derive(Debug, Default)]
pub struct Summary {
    pub packets: usize,
    /// The capture ended inside a record; the records before it were
    /// replayed.
    pub truncated: Option<CaptureError>,
}

/// Writes Ethernet frames as a pcap file, one at a time.
#[derive(Debug)]
pub struct Out(PcapWriter<BufWriter<File>>);

impl Out {
    /// Creates `path`.
    ///
    /// # Errors
    /// The file cannot be created.
    pub fn create(path: &Path) -> std::io::Result<Out> {
        let file = BufWriter::new(File::create(path)?);
        let header = PcapHeader { datalink: DataLink::ETHERNET, ..PcapHeader::default() };
        PcapWriter::with_header(file, header).map(Out).map_err(std::io::Error::other)
    }

    /// Appends one frame.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write(&mut self, ts: Duration, data: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        self.0.write_packet(&PcapPacket::new(ts, len, data)).map(|_| ()).map_err(std::io::Error::other)
    }

    /// Flushes the file.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn finish(self) -> std::io::Result<()> {
        self.0.into_writer().flush()
    }
}

/// Where the frames of each pcapng interface came in: `Some` by the
/// interface's name, `None` to infer it from the frame's source MAC, an
/// error (for its first frame) if the name is no port's and not the
/// uplink's.
fn sources(plan: &Plan, names: &[Option<String>], path: &Path) -> Vec<Result<Option<Source>, String>> {
    let uplink = plan.policy().config().host.uplink_interface.as_deref();
    names
        .iter()
        .map(|n| {
            let Some(name) = n.as_deref() else { return Ok(None) };
            if Some(name) == uplink {
                return Ok(Some(Source::Uplink));
            }
            match (0..).zip(&plan.ports).find(|(_, p)| p.interface.as_deref() == Some(name)) {
                Some((i, _)) => Ok(Some(Source::Port(i))),
                None => {
                    let mut known: Vec<String> = plan.ports.iter().filter_map(|p| p.interface.clone()).collect();
                    known.extend(uplink.map(|u| format!("{u} (uplink)")));
                    Err(ReplayError::UnknownInterface { path: path.display().to_string(), name: name.to_owned(), known: known.join(", ") }
                        .to_string())
                }
            }
        })
        .collect()
}

/// Replays the capture `reader` reads against `plan`: `line(index, outcome)`
/// for every frame in capture order, `forwarded(time, frame)` for every
/// frame the switch sends on, in the order it sends them.
///
/// # Errors
/// The capture cannot be read (a capture cut short inside its last record
/// is not an error: [`Summary::truncated`]), names an unknown interface,
/// or a callback fails.
pub fn replay<R: Read>(
    plan: &Plan,
    reader: &mut Reader<R>,
    path: &Path,
    seed: u64,
    mut line: impl FnMut(usize, &Outcome) -> std::io::Result<()>,
    mut forwarded: impl FnMut(Duration, &[u8]) -> std::io::Result<()>,
) -> Result<Summary, ReplayError> {
    let host = &plan.policy().config().host;
    if let Some(avail) = crate::control::sizing::meminfo("MemAvailable") {
        crate::control::sizing::check_conntrack_memory(host, 1, avail, "MemAvailable")?;
    }
    let frag = FragSettings::default();
    let mut pipe: Pipeline<usize> = Pipeline::new(crate::packet::conntrack_settings(host, seed), frag);
    pipe.adopt(plan);
    // Outcomes from index `base` on, waiting for the first undecided one.
    let mut window: VecDeque<Option<Outcome>> = VecDeque::new();
    let mut base = 0usize;
    // Frames held for their first fragment: their bytes, for `forwarded`.
    let mut held: HashMap<usize, (Duration, Vec<u8>)> = HashMap::new();
    let mut by_interface: Vec<Result<Option<Source>, String>> = Vec::new();
    let ms = |d: Duration| Now(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut now = Now(0);
    let mut summary = Summary::default();
    let out = |e| ReplayError::Output(e);
    let settle = |window: &mut VecDeque<Option<Outcome>>,
                  base: &mut usize,
                  line: &mut dyn FnMut(usize, &Outcome) -> std::io::Result<()>|
     -> std::io::Result<()> {
        while let Some(Some(o)) = window.front() {
            line(*base, o)?;
            window.pop_front();
            *base += 1;
        }
        Ok(())
    };
    let released = |pipe: &mut Pipeline<usize>,
                    window: &mut VecDeque<Option<Outcome>>,
                    base: usize,
                    held: &mut HashMap<usize, (Duration, Vec<u8>)>,
                    forwarded: &mut dyn FnMut(Duration, &[u8]) -> std::io::Result<()>|
     -> std::io::Result<()> {
        for (h, o) in pipe.take_released() {
            if let Some(slot) = h.checked_sub(base).and_then(|i| window.get_mut(i)) {
                *slot = Some(o);
            }
            if let Some((ts, data)) = held.remove(&h)
                && matches!(o.action, Action::Forward(_))
            {
                forwarded(ts, &data)?;
            }
        }
        Ok(())
    };
    let mut i = 0usize;
    loop {
        let rec = match reader.next_record() {
            None => break,
            Some(Ok(r)) => r,
            Some(Err(e @ CaptureError::Truncated { .. })) => {
                summary.truncated = Some(e);
                break;
            }
            Some(Err(e)) => return Err(e.into()),
        };
        let (ts, interface) = (rec.ts, rec.interface);
        if reader.interfaces().len() != by_interface.len() {
            let names: Vec<Option<String>> = reader.interfaces().iter().map(|f| f.name.clone()).collect();
            by_interface = sources(plan, &names, path);
        }
        let data = reader.data();
        now = now.max(ms(ts));
        pipe.tick(plan, now);
        released(&mut pipe, &mut window, base, &mut held, &mut forwarded).map_err(out)?;
        let named = match interface.and_then(|k| by_interface.get(k as usize)) {
            Some(Err(e)) => return Err(ReplayError::Interface(e.clone())),
            Some(Ok(s)) => *s,
            None => None,
        };
        let src = match named {
            Some(s) => s,
            None => {
                // The source MAC (bytes 6..12) says which side sent it.
                let src_mac = data.get(6..12).and_then(|m| <[u8; 6]>::try_from(m).ok());
                src_mac.and_then(|m| plan.port_by_mac(&m)).map_or(Source::Uplink, Source::Port)
            }
        };
        let o = pipe.process(plan, src, data, now, i);
        match o.action {
            Action::Held => {
                held.insert(i, (ts, data.to_vec()));
                window.push_back(None);
            }
            a => {
                if matches!(a, Action::Forward(_)) {
                    forwarded(ts, data).map_err(out)?;
                }
                window.push_back(Some(o));
            }
        }
        released(&mut pipe, &mut window, base, &mut held, &mut forwarded).map_err(out)?;
        settle(&mut window, &mut base, &mut line).map_err(out)?;
        i += 1;
    }
    // The capture ended: whatever is still held never saw its first
    // fragment within the hold time.
    let end = Now(now.0 + u64::from(frag.hold_ms) + 1);
    pipe.tick(plan, end);
    released(&mut pipe, &mut window, base, &mut held, &mut forwarded).map_err(out)?;
    for slot in &mut window {
        slot.get_or_insert(Outcome {
            action: Action::Drop,
            reason: Reason::Fragment,
            port: None,
            direction: sgswitch_config::Direction::Ingress,
        });
    }
    settle(&mut window, &mut base, &mut line).map_err(out)?;
    summary.packets = i;
    Ok(summary)
}

/// The reason as `replay` prints it: `rule:<group>/<direction>/<index>` for
/// a rule, else the reason word.
pub fn reason_text(policy: &Policy, r: Reason) -> String {
    match r {
        Reason::Rule(rr) => format!("rule:{}", policy.rule_name(rr)),
        other => other.as_str().to_owned(),
    }
}

/// Where the frame goes, as `replay` prints it: a port id, `uplink`,
/// `broadcast`, or `None` for a drop.
pub fn to_text(plan: &Plan, o: &Outcome) -> Option<String> {
    match o.action {
        // Replay runs one pipeline, which owns every port: it never hands
        // over; a handed-over frame is on its way to that port.
        Action::Forward(To::Port(p)) | Action::Handover(p) => plan.port(p).map(|p| p.id.to_string()),
        Action::Forward(To::Uplink) => Some("uplink".to_owned()),
        Action::Forward(To::Flood { .. }) => Some("broadcast".to_owned()),
        Action::Drop | Action::Held => None,
    }
}

/// One JSON line of `replay --json`.
pub fn json_line(plan: &Plan, index: usize, o: &Outcome) -> String {
    let action = if matches!(o.action, Action::Forward(_)) { "forward" } else { "drop" };
    serde_json::json!({
        "index": index,
        "action": action,
        "to": to_text(plan, o),
        "reason": reason_text(plan.policy(), o.reason),
        "port": o.port.and_then(|p| plan.port(p)).map(|p| p.id.to_string()),
        "direction": o.direction.as_str(),
    })
    .to_string()
}
