//! `sgswitch replay`: the whole pipeline over a capture, in order, with the
//! capture's timestamps as the clock.
//!
//! A packet is egress of the port whose MAC is its source MAC, else it comes
//! from the uplink (the pipeline then finds its port by destination MAC,
//! else by destination IP). A fragment held for its first fragment is
//! reported when it is decided; lines still come out in capture order.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::Duration;

use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::{Block, PcapNgReader};
use sgswitch_conntrack::{FragSettings, Now};
use sgswitch_filter::Policy;

use crate::pipeline::{Action, Outcome, Pipeline, Reason, Source, To};
use crate::plan::Plan;

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captured {
    pub ts: Duration,
    pub data: Vec<u8>,
}

/// Reads a pcap or pcapng capture of Ethernet frames.
///
/// # Errors
/// The file cannot be read, is not a capture, or is not Ethernet.
pub fn read_capture(path: &Path) -> Result<Vec<Captured>, String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let mut file = File::open(path).map_err(|e| err(&e))?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).map_err(|e| err(&format!("not a capture ({e})")))?;
    let file = BufReader::new(File::open(path).map_err(|e| err(&e))?);
    let mut out = Vec::new();
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut r = PcapNgReader::new(file).map_err(|e| err(&e))?;
        while let Some(block) = r.next_block() {
            match block.map_err(|e| err(&e))?.into_owned() {
                Block::EnhancedPacket(p) => {
                    let link = r.packet_interface(&p).map(|i| i.linktype);
                    if link.is_some_and(|l| l != DataLink::ETHERNET) {
                        return Err(err(&"only Ethernet captures can be replayed"));
                    }
                    out.push(Captured { ts: p.timestamp, data: p.data.into_owned() });
                }
                Block::SimplePacket(p) => out.push(Captured { ts: Duration::ZERO, data: p.data.into_owned() }),
                _ => {}
            }
        }
    } else {
        let mut r = PcapReader::new(file).map_err(|e| err(&e))?;
        if r.header().datalink != DataLink::ETHERNET {
            return Err(err(&format!("link type {:?}: only Ethernet captures can be replayed", r.header().datalink)));
        }
        while let Some(p) = r.next_packet() {
            let p = p.map_err(|e| err(&e))?;
            out.push(Captured { ts: p.timestamp, data: p.data.into_owned() });
        }
    }
    Ok(out)
}

/// Writes Ethernet frames as a pcap file.
///
/// # Errors
/// The file cannot be written.
pub fn write_capture(path: &Path, frames: &[Captured]) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let file = BufWriter::new(File::create(path).map_err(|e| err(&e))?);
    let header = PcapHeader { datalink: DataLink::ETHERNET, ..PcapHeader::default() };
    let mut w = PcapWriter::with_header(file, header).map_err(|e| err(&e))?;
    for f in frames {
        let len = u32::try_from(f.data.len()).unwrap_or(u32::MAX);
        w.write_packet(&PcapPacket::new(f.ts, len, &f.data)).map_err(|e| err(&e))?;
    }
    w.into_writer().flush().map_err(|e| err(&e))
}

/// The decision for every frame, in capture order.
pub fn run(plan: &Plan, frames: &[Captured], seed: u64) -> Vec<Outcome> {
    let host = &plan.policy().config().host;
    let mut pipe: Pipeline<usize> = Pipeline::new(crate::pipeline::conntrack_settings(host, seed), FragSettings::default());
    pipe.adopt(plan);
    let mut out: Vec<Option<Outcome>> = vec![None; frames.len()];
    let ms = |d: Duration| Now(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut now = Now(0);
    for (i, f) in frames.iter().enumerate() {
        now = now.max(ms(f.ts));
        pipe.tick(plan, now);
        // The source MAC (bytes 6..12) says which side sent the frame.
        let src_mac = f.data.get(6..12).and_then(|m| <[u8; 6]>::try_from(m).ok());
        let src = src_mac.and_then(|m| plan.port_by_mac(&m)).map_or(Source::Uplink, Source::Port);
        let o = pipe.process(plan, src, &f.data, now, i);
        if o.action != Action::Held {
            out[i] = Some(o);
        }
        for (h, o) in pipe.take_released() {
            out[h] = Some(o);
        }
    }
    // The capture ended: whatever is still held never saw its first
    // fragment within the hold time.
    let end = Now(now.0 + u64::from(FragSettings::default().hold_ms) + 1);
    pipe.tick(plan, end);
    for (h, o) in pipe.take_released() {
        out[h] = Some(o);
    }
    out.into_iter()
        .map(|o| {
            o.unwrap_or(Outcome {
                action: Action::Drop,
                reason: Reason::Fragment,
                port: None,
                direction: sgswitch_config::Direction::Ingress,
            })
        })
        .collect()
}

/// The reason as `replay` prints it: `rule:<group>/<direction>/<index>` for
/// a rule, else the reason word.
pub fn reason_text(policy: &Policy, r: Reason) -> String {
    match r {
        Reason::Rule(rr) => format!("rule:{}/{}/{}", policy.group(rr.group).id, rr.direction.as_str(), rr.index),
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
