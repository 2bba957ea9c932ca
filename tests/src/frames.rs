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
    ip_hops(e, 64)
}

/// The IP layer with a TTL or hop limit of `hops`.
fn ip_hops(e: &Ends, hops: u8) -> PacketBuilderStep<etherparse::IpHeaders> {
    let eth = PacketBuilder::ethernet2(e.src_mac, e.dst_mac);
    match (e.src, e.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), hops),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), hops),
        _ => panic!("mixed address families"),
    }
}

/// An ICMPv6 message with hop limit `hops`: type, code, bytes 4..8 of the
/// header, the rest.
pub fn icmp6(e: &Ends, hops: u8, typ: u8, code: u8, rest: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ip_hops(e, hops).icmpv6_raw(typ, code, rest).write(&mut out, payload).expect("build icmpv6");
    out
}

/// A neighbour-discovery message (RFC 4861) with hop limit `hops`: router
/// solicitation (133) or advertisement (134), neighbour solicitation (135)
/// or advertisement (136, solicited and override), redirect (137). `target`
/// for 135..=137; `ll` is the link-layer address option (the source's for
/// 133..=135, the target's for 136 and 137).
pub fn nd(e: &Ends, hops: u8, typ: u8, target: Option<std::net::Ipv6Addr>, ll: Option<Mac>) -> Vec<u8> {
    let mut payload = Vec::new();
    let mut rest = [0u8; 4];
    match typ {
        134 => {
            rest = [64, 0, 0x07, 0x08];
            payload.extend_from_slice(&[0; 8]);
        }
        136 => rest[0] = 0x60,
        _ => {}
    }
    if let Some(t) = target {
        payload.extend_from_slice(&t.octets());
    }
    if typ == 137 {
        payload.extend_from_slice(&target.expect("a redirect's destination").octets());
    }
    if let Some(m) = ll {
        payload.extend_from_slice(&[if matches!(typ, 136 | 137) { 2 } else { 1 }, 1]);
        payload.extend_from_slice(&m);
    }
    icmp6(e, hops, typ, 0, rest, &payload)
}

/// An MLDv2 report (ICMPv6 143) with one record, hop limit `hops`.
pub fn mld2_report(e: &Ends, hops: u8) -> Vec<u8> {
    let mut record = vec![4, 0, 0, 0];
    record.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0x21]);
    icmp6(e, hops, 143, 0, [0, 0, 0, 1], &record)
}

/// `frame` with VLAN tags inserted after its MACs: one 802.1Q tag, or an
/// 802.1ad (QinQ) tag before each further 802.1Q one.
pub fn tagged(frame: &[u8], vids: &[u16]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for (i, vid) in vids.iter().enumerate() {
        let tpid: u16 = if i + 1 < vids.len() { 0x88a8 } else { 0x8100 };
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&vid.to_be_bytes());
    }
    out.extend_from_slice(&frame[12..]);
    out
}

/// The IPv6 link-local address a host derives from its MAC (modified
/// EUI-64).
pub fn eui64(m: Mac) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::from([0xfe, 0x80, 0, 0, 0, 0, 0, 0, m[0] ^ 2, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]])
}

/// The Ethernet multicast address of an IPv6 multicast group.
pub fn mcast_mac(group: std::net::Ipv6Addr) -> Mac {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
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

/// Writes a pcapng capture: one interface description per name (`None`:
/// no name), then each frame (time in ms, interface index, frame) as an
/// enhanced packet block.
pub fn write_pcapng(path: &Path, interfaces: &[Option<&str>], frames: &[(u64, u32, Vec<u8>)]) {
    fn block(out: &mut Vec<u8>, kind: u32, body: &[u8]) {
        let pad = body.len().div_ceil(4) * 4 - body.len();
        let len = u32::try_from(12 + body.len() + pad).expect("block length");
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(body);
        out.extend(std::iter::repeat_n(0, pad));
        out.extend_from_slice(&len.to_le_bytes());
    }
    let mut out = Vec::new();
    let mut shb = Vec::new();
    shb.extend_from_slice(&0x1a2b_3c4d_u32.to_le_bytes());
    shb.extend_from_slice(&[1, 0, 0, 0]);
    shb.extend_from_slice(&u64::MAX.to_le_bytes());
    block(&mut out, 0x0a0d_0d0a, &shb);
    for name in interfaces {
        let mut idb = vec![1, 0, 0, 0];
        idb.extend_from_slice(&0u32.to_le_bytes());
        if let Some(n) = name {
            idb.extend_from_slice(&2u16.to_le_bytes());
            idb.extend_from_slice(&u16::try_from(n.len()).expect("short name").to_le_bytes());
            idb.extend_from_slice(n.as_bytes());
            idb.extend(std::iter::repeat_n(0, n.len().div_ceil(4) * 4 - n.len()));
            idb.extend_from_slice(&[0, 0, 0, 0]);
        }
        block(&mut out, 1, &idb);
    }
    for (ms, iface, f) in frames {
        let us = ms * 1000;
        let mut epb = Vec::new();
        epb.extend_from_slice(&iface.to_le_bytes());
        epb.extend_from_slice(&u32::try_from(us >> 32).expect("time").to_le_bytes());
        epb.extend_from_slice(&u32::try_from(us & 0xffff_ffff).expect("time").to_le_bytes());
        let n = u32::try_from(f.len()).expect("frame length");
        epb.extend_from_slice(&n.to_le_bytes());
        epb.extend_from_slice(&n.to_le_bytes());
        epb.extend_from_slice(f);
        block(&mut out, 6, &epb);
    }
    std::fs::write(path, out).expect("write pcapng");
}

/// Writes a pcap capture by hand with snapshot length `snaplen`: each frame
/// (time in ms) is cut to `snaplen` bytes and keeps its original length.
pub fn write_pcap_snaplen(path: &Path, snaplen: u32, frames: &[(u64, Vec<u8>)]) {
    let mut out = Vec::new();
    for v in [0xa1b2_c3d4_u32, 0x0004_0002, 0, 0, snaplen, 1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for (ms, f) in frames {
        let cap = f.len().min(snaplen as usize);
        for v in [ms / 1000, (ms % 1000) * 1000, cap as u64, f.len() as u64] {
            out.extend_from_slice(&u32::try_from(v).expect("field").to_le_bytes());
        }
        out.extend_from_slice(&f[..cap]);
    }
    std::fs::write(path, out).expect("write pcap");
}
