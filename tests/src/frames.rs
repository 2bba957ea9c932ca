//! Real Ethernet frames for the pipeline tests, built with etherparse, and
//! captures written with pcap-file.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use etherparse::{IpNumber, PacketBuilder, PacketBuilderStep, TcpOptionElement};
use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};

pub type Mac = [u8; 6];

/// The uplink side's MAC in the tests (the "router").
pub const UPLINK_MAC: Mac = [0x02, 0xee, 0, 0, 0, 1];
pub const BROADCAST: Mac = [0xff; 6];

/// Layer-2 and layer-3 ends of a frame.
#[derive(Clone, Copy, Debug)]
pub struct Ends {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src: IpAddr,
    pub dst: IpAddr,
}

impl Ends {
    /// The same path the other way.
    pub fn reversed(&self) -> Ends {
        Ends { src_mac: self.dst_mac, dst_mac: self.src_mac, src: self.dst, dst: self.src }
    }
}

fn ip(e: &Ends) -> PacketBuilderStep<etherparse::IpHeaders> {
    let eth = PacketBuilder::ethernet2(e.src_mac, e.dst_mac);
    match (e.src, e.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed address families"),
    }
}

/// TCP flags as letters: S, A, F, R, P.
pub fn tcp(e: &Ends, sport: u16, dport: u16, flags: &str, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = ip(e).tcp(sport, dport, seq, 64240);
    for c in flags.chars() {
        b = match c {
            'S' => b.syn(),
            'A' => b.ack(ack),
            'F' => b.fin(),
            'R' => b.rst(),
            'P' => b.psh(),
            other => panic!("tcp flag {other}"),
        };
    }
    if flags.contains('S') {
        b = b.options(&[TcpOptionElement::MaximumSegmentSize(1460)]).expect("tcp options");
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("build tcp");
    out
}

pub fn udp(e: &Ends, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ip(e).udp(sport, dport).write(&mut out, payload).expect("build udp");
    out
}

/// ICMP (v4 or v6 by the addresses) echo request or reply.
pub fn echo(e: &Ends, id: u16, seq: u16, request: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let b = ip(e);
    let v6 = e.src.is_ipv6();
    match (v6, request) {
        (false, true) => b.icmpv4_echo_request(id, seq).write(&mut out, b"ping"),
        (false, false) => b.icmpv4_echo_reply(id, seq).write(&mut out, b"ping"),
        (true, true) => b.icmpv6_echo_request(id, seq).write(&mut out, b"ping"),
        (true, false) => b.icmpv6_echo_reply(id, seq).write(&mut out, b"ping"),
    }
    .expect("build echo");
    out
}

/// Any ICMP (v4 or v6 by the addresses) message: type, code, bytes 4..8 of
/// the header, payload (for errors: the embedded packet).
pub fn icmp(e: &Ends, typ: u8, code: u8, rest: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if e.src.is_ipv6() {
        ip(e).icmpv6_raw(typ, code, rest).write(&mut out, payload)
    } else {
        ip(e).icmpv4_raw(typ, code, rest).write(&mut out, payload)
    }
    .expect("build icmp");
    out
}

/// An IP packet of any protocol with `payload`.
pub fn raw_ip(e: &Ends, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ip(e).write(&mut out, IpNumber(proto), payload).expect("build ip");
    out
}

/// The IP packet inside an Ethernet frame (to embed in an ICMP error).
pub fn ip_part(frame: &[u8]) -> &[u8] {
    &frame[14..]
}

/// An ARP request or reply (op 1 or 2).
pub fn arp(src_mac: Mac, dst_mac: Mac, op: u16, sender_mac: Mac, sender_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender_ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target_ip);
    f
}

/// Splits an IPv4 frame's payload into fragments of at most `size` bytes
/// (a multiple of 8) with identification `id`; returns them in order.
pub fn fragment_v4(frame: &[u8], size: usize, id: u16) -> Vec<Vec<u8>> {
    assert!(size % 8 == 0 && size > 0, "fragment size is a multiple of 8");
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let (head, data) = frame.split_at(14 + ihl);
    let pieces: Vec<&[u8]> = data.chunks(size).collect();
    let n = pieces.len();
    pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let mut f = head.to_vec();
            f.extend_from_slice(piece);
            let total = u16::try_from(ihl + piece.len()).expect("fits");
            f[16..18].copy_from_slice(&total.to_be_bytes());
            f[18..20].copy_from_slice(&id.to_be_bytes());
            let units = u16::try_from(i * size / 8).expect("offset fits");
            let mf = if i + 1 < n { 0x2000 } else { 0 };
            f[20..22].copy_from_slice(&(mf | units).to_be_bytes());
            let (header, _) = etherparse::Ipv4Header::from_slice(&f[14..]).expect("the header just written");
            f[24..26].copy_from_slice(&header.calc_header_checksum().to_be_bytes());
            f
        })
        .collect()
}

/// Writes frames, each with its time in milliseconds, as a pcap file.
pub fn write_pcap(path: &Path, frames: &[(u64, Vec<u8>)]) {
    let file = std::fs::File::create(path).expect("create pcap");
    let header = PcapHeader { datalink: DataLink::ETHERNET, ..PcapHeader::default() };
    let mut w = PcapWriter::with_header(file, header).expect("pcap header");
    for (ms, f) in frames {
        let len = u32::try_from(f.len()).expect("frame length");
        w.write_packet(&PcapPacket::new(Duration::from_millis(*ms), len, f)).expect("write packet");
    }
}
