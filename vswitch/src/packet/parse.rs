//! Frame parsing: a zero-copy read of the headers the pipeline decides on.
//!
//! Ethernet (with one or two 802.1Q/802.1ad tags) and ARP are read by hand:
//! they are fixed-size and a dozen lines. IPv4 (with options and AH) and IPv6
//! (with its extension-header chain, fragment header included) are read with
//! etherparse's sliced API, which validates lengths, IHL and the chain. The
//! transport fields the policy and conntrack need (ports, TCP flags and
//! sequence number, ICMP type, code and echo id, and the embedded header of
//! ICMP errors) are read straight from the IP payload.
//!
//! Nothing here allocates or panics: every read is bounds-checked and a frame
//! that does not hold what its headers promise is [`Malformed`]. Any byte
//! string is a valid input. The IPv6 extension chain is bounded by the frame
//! (every header is at least 8 bytes).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{Ipv4Slice, Ipv6ExtensionSlice, Ipv6Slice, LaxIpSlice};

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_ARP: u16 = 0x0806;
pub const ETH_IPV6: u16 = 0x86dd;
const ETH_VLAN: u16 = 0x8100;
const ETH_QINQ: u16 = 0x88a8;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

/// Why a frame could not be read. Counted, never fatal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than an Ethernet header (or its VLAN tags).
    Ethernet,
    Arp,
    /// The IP header is truncated or inconsistent (bad IHL, lengths,
    /// extension chain).
    Ip,
    /// An unfragmented (or first-fragment) TCP/UDP/ICMP header that is
    /// truncated or has a bad data offset.
    Transport,
}

impl Malformed {
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::Ethernet => "ethernet",
            Malformed::Arp => "arp",
            Malformed::Ip => "ip",
            Malformed::Transport => "transport",
        }
    }
}

pub use crate::datapath::MacAddr;

/// The headers of one frame, copied out (a few dozen bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub dst: MacAddr,
    pub src: MacAddr,
    /// The outer VLAN id, if tagged.
    pub vlan: Option<u16>,
    /// Bytes on the wire.
    pub len: u32,
    pub net: Net,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    Arp(Arp),
    Ip(Ip),
    /// Another ethertype.
    Other(u16),
}

/// An Ethernet/IPv4 ARP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arp {
    pub op: u16,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

/// An IPv4 or IPv6 packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ip {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The upper-layer protocol (after IPv6 extension headers).
    pub proto: u8,
    /// IPv6's hop limit, which neighbour discovery and MLD are checked by;
    /// 0 for IPv4, whose TTL no decision reads.
    pub hop_limit: u8,
    /// Set when the packet is a fragment of a larger datagram.
    pub frag: Option<Frag>,
    pub l4: L4,
}

/// The fragment fields of a fragmented datagram's piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frag {
    /// IPv4: 16 bits; IPv6: 32.
    pub id: u32,
    /// Offset of this piece's data in the datagram, in bytes.
    pub offset: u32,
    /// Bytes of datagram data in this piece.
    pub len: u32,
}

/// The transport fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// A non-first fragment, a tiny first fragment, or a protocol without
    /// ports (GRE, ESP, ...).
    None,
    Tcp(Tcp),
    Udp {
        sport: u16,
        dport: u16,
        payload_len: u32,
    },
    /// ICMP or ICMPv6 (by the packet's protocol).
    Icmp(Icmp),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tcp {
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    pub seq: u32,
    pub payload_len: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Icmp {
    pub typ: u8,
    pub code: u8,
    /// The echo identifier for echo requests and replies, else 0.
    pub echo_id: Option<u16>,
    /// What an error embeds, or what a neighbour-discovery message names.
    pub body: IcmpBody,
}

impl Icmp {
    /// For errors: the header embedded in the error.
    pub fn inner(&self) -> Option<Inner> {
        match self.body {
            IcmpBody::Error(i) => Some(i),
            _ => None,
        }
    }

    /// For a well-formed neighbour-discovery message (ICMPv6 133..=137):
    /// its target and link-layer option.
    pub fn nd(&self) -> Option<Nd> {
        match self.body {
            IcmpBody::Nd(n) => Some(n),
            _ => None,
        }
    }
}

/// The part of an ICMP message past its first eight bytes that a decision
/// reads. One or the other, so that the two share their bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpBody {
    None,
    /// An error's embedded header.
    Error(Inner),
    /// A neighbour-discovery message whose fixed part and options are well
    /// formed (RFC 4861 section 4: every option at least 8 bytes and within
    /// the message, at most one link-layer address).
    Nd(Nd),
}

/// What a neighbour-discovery message names (RFC 4861).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nd {
    /// The target of a neighbour solicitation or advertisement (or
    /// redirect); unspecified (`::`) for router solicitations and
    /// advertisements.
    pub target: Ipv6Addr,
    /// The link-layer address option: the source's (type 1) in
    /// solicitations and router advertisements, the target's (type 2) in
    /// advertisements and redirects.
    pub lladdr: Option<MacAddr>,
}

/// The header an ICMP error carries: the packet that caused it, as sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inner {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// Ports (TCP/UDP) or the echo id twice (ICMP echo); 0 otherwise.
    pub sport: u16,
    pub dport: u16,
}

impl Ip {
    pub fn is_v6(&self) -> bool {
        self.src.is_ipv6()
    }

    /// (source port, destination port) as conntrack and the policy read
    /// them: TCP/UDP ports, the echo id twice for ICMP echo, else (0, 0).
    pub fn ports(&self) -> (u16, u16) {
        match self.l4 {
            L4::Tcp(t) => (t.sport, t.dport),
            L4::Udp { sport, dport, .. } => (sport, dport),
            L4::Icmp(Icmp { echo_id: Some(id), .. }) => (id, id),
            _ => (0, 0),
        }
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([*b.get(at)?, *b.get(at + 1)?, *b.get(at + 2)?, *b.get(at + 3)?]))
}

fn mac_of<const N: usize>(h: &[u8; N], at: usize) -> MacAddr {
    std::array::from_fn(|i| h[at + i])
}

fn mac(b: &[u8], at: usize) -> Option<MacAddr> {
    b.get(at..at + 6)?.try_into().ok()
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Reads one Ethernet frame.
///
/// # Errors
/// [`Malformed`] when a header is truncated or inconsistent.
#[inline]
pub fn parse(data: &[u8]) -> Result<Frame, Malformed> {
    // One length check for the fixed header, then reads without checks.
    let eth: &[u8; 14] = data.get(..14).and_then(|h| h.try_into().ok()).ok_or(Malformed::Ethernet)?;
    let (dst, src) = (mac_of(eth, 0), mac_of(eth, 6));
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut at = 14;
    let mut vlan = None;
    // At most two tags (802.1ad outer, 802.1Q inner).
    for _ in 0..2 {
        if ethertype != ETH_VLAN && ethertype != ETH_QINQ {
            break;
        }
        let tci = be16(data, at).ok_or(Malformed::Ethernet)?;
        vlan.get_or_insert(tci & 0x0fff);
        ethertype = be16(data, at + 2).ok_or(Malformed::Ethernet)?;
        at += 4;
    }
    let body = &data[at..];
    let net = match ethertype {
        ETH_ARP => Net::Arp(arp(body).ok_or(Malformed::Arp)?),
        ETH_IPV4 => Net::Ip(ipv4(body)?),
        ETH_IPV6 => Net::Ip(ipv6(body)?),
        other => Net::Other(other),
    };
    Ok(Frame { dst, src, vlan, len: len32(data.len()), net })
}

/// A frame of the flow cache's shape ([`flow_v4`]): an untagged IPv4 TCP,
/// UDP or ICMP echo (request or reply) packet with a 20-byte header, not a
/// fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowV4 {
    pub dst: MacAddr,
    pub src: MacAddr,
    pub saddr: Ipv4Addr,
    pub daddr: Ipv4Addr,
    /// [`TCP`], [`UDP`] or [`ICMP`].
    pub proto: u8,
    /// The ports as conntrack and the policy read them: TCP/UDP ports, or
    /// the echo identifier twice ([`Ip::ports`]).
    pub sport: u16,
    pub dport: u16,
    /// TCP's flags and sequence number (0 otherwise).
    pub tcp_flags: u8,
    pub tcp_seq: u32,
    /// ICMP's type and code (0 otherwise).
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// The TCP or UDP payload's length (0 for ICMP, whose length conntrack
    /// does not read).
    pub payload_len: u32,
    /// Bytes on the wire.
    pub len: u32,
}

impl FlowV4 {
    /// The frame as [`parse`] reads it.
    pub fn frame(&self) -> Frame {
        Frame { dst: self.dst, src: self.src, vlan: None, len: self.len, net: Net::Ip(self.ip()) }
    }

    /// The IP packet as [`parse`] reads it.
    pub fn ip(&self) -> Ip {
        let (sport, dport) = (self.sport, self.dport);
        let l4 = match self.proto {
            TCP => L4::Tcp(Tcp { sport, dport, flags: self.tcp_flags, seq: self.tcp_seq, payload_len: self.payload_len }),
            UDP => L4::Udp { sport, dport, payload_len: self.payload_len },
            _ => L4::Icmp(Icmp { typ: self.icmp_type, code: self.icmp_code, echo_id: Some(sport), body: IcmpBody::None }),
        };
        Ip { src: IpAddr::V4(self.saddr), dst: IpAddr::V4(self.daddr), proto: self.proto, hop_limit: 0, frag: None, l4 }
    }
}

/// Reads a frame of the flow cache's shape straight from its fixed
/// offsets: `None` for any other frame, and for every frame [`parse`]
/// refuses. For the frames it reads, `parse` gives exactly
/// [`FlowV4::frame`] (a test holds the two to it): the same refusals of
/// bad lengths and data offsets, in a few loads and compares.
#[inline]
pub fn flow_v4(d: &[u8]) -> Option<FlowV4> {
    // Ethernet, the IPv4 header and a UDP header's (or an ICMP echo's) 8
    // bytes.
    let h: &[u8; 42] = d.get(..42)?.try_into().ok()?;
    let proto = h[23];
    if u16::from_be_bytes([h[12], h[13]]) != ETH_IPV4 || h[14] != 0x45 || !matches!(proto, TCP | UDP | ICMP) {
        return None;
    }
    // Neither more fragments nor an offset (don't-fragment is fine).
    if u16::from_be_bytes([h[20], h[21]]) & 0x3fff != 0 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([h[16], h[17]]));
    let p = d.get(34..14 + total)?;
    let (sport, dport) = (u16::from_be_bytes([h[34], h[35]]), u16::from_be_bytes([h[36], h[37]]));
    // (source port, destination port, TCP flags, TCP sequence number, ICMP
    // type and code, payload length)
    let (sport, dport, tcp_flags, tcp_seq, icmp, payload_len) = match proto {
        TCP => {
            let t = tcp(p)?;
            (t.sport, t.dport, t.flags, t.seq, [0, 0], t.payload_len)
        }
        UDP => {
            let udp_len = usize::from(u16::from_be_bytes([h[38], h[39]]));
            if udp_len < 8 || udp_len > p.len() {
                return None;
            }
            (sport, dport, 0, 0, [0, 0], len32(udp_len - 8))
        }
        _ => {
            // Echo requests and replies only: an error is judged by the
            // header it carries, other types statelessly.
            if p.len() < 8 || !is_echo(h[34], false) {
                return None;
            }
            let id = u16::from_be_bytes([h[38], h[39]]);
            (id, id, 0, 0, [h[34], h[35]], 0)
        }
    };
    Some(FlowV4 {
        dst: mac_of(h, 0),
        src: mac_of(h, 6),
        saddr: Ipv4Addr::new(h[26], h[27], h[28], h[29]),
        daddr: Ipv4Addr::new(h[30], h[31], h[32], h[33]),
        proto,
        sport,
        dport,
        tcp_flags,
        tcp_seq,
        icmp_type: icmp[0],
        icmp_code: icmp[1],
        payload_len,
        len: len32(d.len()),
    })
}

fn arp(b: &[u8]) -> Option<Arp> {
    // Ethernet (1) / IPv4 (0x0800), 6-byte and 4-byte addresses.
    if be16(b, 0)? != 1 || be16(b, 2)? != ETH_IPV4 || *b.get(4)? != 6 || *b.get(5)? != 4 {
        return None;
    }
    let ip = |at: usize| -> Option<Ipv4Addr> { Some(Ipv4Addr::from(be32(b, at)?)) };
    Some(Arp { op: be16(b, 6)?, sender_mac: mac(b, 8)?, sender_ip: ip(14)?, target_ip: ip(24)? })
}

/// The IP protocol number of an authentication header (IPv4's one
/// extension header, which etherparse reads).
const AH: u8 = 51;

#[inline]
fn ipv4(b: &[u8]) -> Result<Ip, Malformed> {
    // The common header (no options, no AH) read by hand after one length
    // check, with the same refusals as etherparse's; anything else goes to
    // etherparse. A test holds the two paths to the same answers.
    if let Some(h) = b.get(..20).and_then(|h| <&[u8; 20]>::try_from(h).ok())
        && h[0] == 0x45
        && h[9] != AH
    {
        let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let payload = b.get(20..total).ok_or(Malformed::Ip)?;
        let proto = h[9];
        let flags = u16::from_be_bytes([h[6], h[7]]);
        let offset = u32::from(flags & 0x1fff) * 8;
        let frag = (flags & 0x2000 != 0 || offset != 0).then(|| Frag {
            id: u32::from(u16::from_be_bytes([h[4], h[5]])),
            offset,
            len: len32(payload.len()),
        });
        let l4 = transport(proto, payload, frag, false)?;
        let addr = |at: usize| IpAddr::V4(Ipv4Addr::new(h[at], h[at + 1], h[at + 2], h[at + 3]));
        return Ok(Ip { src: addr(12), dst: addr(16), proto, hop_limit: 0, frag, l4 });
    }
    ipv4_general(b)
}

/// IPv4 with options or an authentication header, and every refusal, by
/// etherparse.
fn ipv4_general(b: &[u8]) -> Result<Ip, Malformed> {
    let s = Ipv4Slice::from_slice(b).map_err(|_| Malformed::Ip)?;
    let h = s.header();
    let payload = s.payload();
    let proto = payload.ip_number.0;
    let offset = u32::from(h.fragments_offset().byte_offset());
    let frag =
        (h.more_fragments() || offset != 0).then(|| Frag { id: u32::from(h.identification()), offset, len: len32(payload.payload.len()) });
    let l4 = transport(proto, payload.payload, frag, false)?;
    Ok(Ip { src: IpAddr::V4(h.source_addr()), dst: IpAddr::V4(h.destination_addr()), proto, hop_limit: 0, frag, l4 })
}

fn ipv6(b: &[u8]) -> Result<Ip, Malformed> {
    let s = Ipv6Slice::from_slice(b).map_err(|_| Malformed::Ip)?;
    let h = s.header();
    let payload = s.payload();
    let proto = payload.ip_number.0;
    let mut frag = None;
    for ext in s.extensions().clone() {
        if let Ipv6ExtensionSlice::Fragment(f) = ext {
            let offset = u32::from(f.fragment_offset().byte_offset());
            // An atomic fragment (offset 0, no more) is a whole datagram.
            if f.more_fragments() || offset != 0 {
                frag = Some(Frag { id: f.identification(), offset, len: len32(payload.payload.len()) });
            }
        }
    }
    let l4 = transport(proto, payload.payload, frag, true)?;
    Ok(Ip { src: IpAddr::V6(h.source_addr()), dst: IpAddr::V6(h.destination_addr()), proto, hop_limit: h.hop_limit(), frag, l4 })
}

/// The transport fields of an IP payload. A non-first fragment has none; a
/// first fragment too short for its header has none either (conntrack's
/// fragment rules drop it as tiny).
#[inline]
fn transport(proto: u8, p: &[u8], frag: Option<Frag>, v6: bool) -> Result<L4, Malformed> {
    let fragmented = frag.is_some();
    if frag.is_some_and(|f| f.offset != 0) {
        return Ok(L4::None);
    }
    let l4 = match (proto, v6) {
        (TCP, _) => tcp(p).map(L4::Tcp),
        (UDP, _) => (|| {
            let udp_len = usize::from(be16(p, 4)?);
            // A fragment's UDP length covers the whole datagram.
            if !fragmented && (udp_len < 8 || udp_len > p.len()) {
                return None;
            }
            // A first fragment shorter than the header is tiny: no ports.
            let payload_len = if fragmented { p.len() } else { udp_len }.checked_sub(8)?;
            Some(L4::Udp { sport: be16(p, 0)?, dport: be16(p, 2)?, payload_len: len32(payload_len) })
        })(),
        (ICMP, false) | (ICMPV6, true) => icmp(p, v6).map(L4::Icmp),
        _ => return Ok(L4::None),
    };
    match l4 {
        Some(l4) => Ok(l4),
        None if fragmented => Ok(L4::None),
        None => Err(Malformed::Transport),
    }
}

#[inline(always)]
fn tcp(p: &[u8]) -> Option<Tcp> {
    let h: &[u8; 20] = p.get(..20)?.try_into().ok()?;
    let doff = usize::from(h[12] >> 4) * 4;
    if doff < 20 || doff > p.len() {
        return None;
    }
    Some(Tcp {
        sport: u16::from_be_bytes([h[0], h[1]]),
        dport: u16::from_be_bytes([h[2], h[3]]),
        seq: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        flags: h[13],
        payload_len: len32(p.len() - doff),
    })
}

/// Whether an ICMP (v4) or ICMPv6 type is an error that embeds the packet
/// that caused it.
pub fn is_icmp_error(typ: u8, v6: bool) -> bool {
    if v6 { matches!(typ, 1..=4) } else { matches!(typ, 3 | 11 | 12) }
}

/// Whether an ICMP (v4) or ICMPv6 type is an echo request or reply, which
/// carries an identifier (conntrack tracks it as a flow).
fn is_echo(typ: u8, v6: bool) -> bool {
    if v6 { matches!(typ, 128 | 129) } else { matches!(typ, 0 | 8) }
}

fn icmp(p: &[u8], v6: bool) -> Option<Icmp> {
    let (typ, code) = (*p.first()?, *p.get(1)?);
    if p.len() < 8 {
        return None;
    }
    let echo_id = if is_echo(typ, v6) { Some(be16(p, 4)?) } else { None };
    let body = if is_icmp_error(typ, v6) {
        embedded(&p[8..], v6).map_or(IcmpBody::None, IcmpBody::Error)
    } else if v6 {
        nd(typ, p).map_or(IcmpBody::None, IcmpBody::Nd)
    } else {
        IcmpBody::None
    };
    Some(Icmp { typ, code, echo_id, body })
}

/// Neighbour-discovery messages: router solicitation and advertisement,
/// neighbour solicitation and advertisement, redirect.
pub const ND_RS: u8 = 133;
pub const ND_RA: u8 = 134;
pub const ND_NS: u8 = 135;
pub const ND_NA: u8 = 136;
pub const ND_REDIRECT: u8 = 137;

/// The target and link-layer option of a neighbour-discovery message `p`
/// (the whole ICMPv6 message) of type `typ`; `None` if it is not one, or is
/// not well formed (RFC 4861 section 4: the fixed part is there, every
/// option is a non-zero number of 8-byte units within the message, and
/// the message carries at most one link-layer address of the kind it may).
fn nd(typ: u8, p: &[u8]) -> Option<Nd> {
    // (where the options start, whether a target follows the first 8 bytes,
    // the link-layer option's type)
    let (opts, has_target, ll_type) = match typ {
        ND_RS => (8, false, 1),
        ND_RA => (16, false, 1),
        ND_NS => (24, true, 1),
        ND_NA => (24, true, 2),
        ND_REDIRECT => (40, true, 2),
        _ => return None,
    };
    let target = if has_target {
        let t: [u8; 16] = p.get(8..24)?.try_into().ok()?;
        Ipv6Addr::from(t)
    } else {
        Ipv6Addr::UNSPECIFIED
    };
    let mut lladdr = None;
    let mut at = opts;
    let mut rest = p.get(at..)?;
    while !rest.is_empty() {
        let (kind, units) = (*rest.first()?, usize::from(*rest.get(1)?));
        let len = units * 8;
        if len == 0 || len > rest.len() {
            return None;
        }
        if kind == ll_type {
            // One Ethernet address (in an 8-byte option), once.
            if units != 1 || lladdr.is_some() {
                return None;
            }
            lladdr = Some(mac(rest, 2)?);
        }
        at += len;
        rest = p.get(at..)?;
    }
    Some(Nd { target, lladdr })
}

/// The embedded header of an ICMP error: IP header plus at least the first
/// 8 bytes of its payload (RFC 792), possibly truncated; lax parsing.
fn embedded(b: &[u8], v6: bool) -> Option<Inner> {
    let (ip, _) = LaxIpSlice::from_slice(b).ok()?;
    let (src, dst) = (ip.source_addr(), ip.destination_addr());
    if src.is_ipv6() != v6 {
        return None;
    }
    let payload = ip.payload();
    let proto = payload.ip_number.0;
    let q = payload.payload;
    let (sport, dport) = match proto {
        TCP | UDP => (be16(q, 0)?, be16(q, 2)?),
        ICMP | ICMPV6 => {
            let typ = *q.first()?;
            let echo = if v6 { matches!(typ, 128 | 129) } else { matches!(typ, 0 | 8) };
            if echo {
                let id = be16(q, 4)?;
                (id, id)
            } else {
                (0, 0)
            }
        }
        _ => (0, 0),
    };
    Some(Inner { src, dst, proto, sport, dport })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    const A: MacAddr = [2, 0, 0, 0, 0, 1];
    const B: MacAddr = [2, 0, 0, 0, 0, 2];

    fn tcp_v4(flags_syn: bool) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(A, B).ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).tcp(40000, 22, 7, 1000);
        let b = if flags_syn { b.syn() } else { b.ack(1) };
        let mut out = Vec::new();
        b.write(&mut out, b"hello").unwrap();
        out
    }

    #[test]
    fn reads_tcp_over_ipv4() {
        let f = parse(&tcp_v4(true)).unwrap();
        assert_eq!((f.src, f.dst, f.vlan), (A, B, None));
        let Net::Ip(ip) = f.net else { panic!("not ip") };
        assert_eq!(ip.src, IpAddr::from([10, 0, 0, 1]));
        assert_eq!(ip.proto, TCP);
        assert_eq!(ip.frag, None);
        assert_eq!(ip.l4, L4::Tcp(Tcp { sport: 40000, dport: 22, flags: 0x02, seq: 7, payload_len: 5 }));
    }

    #[test]
    fn reads_vlan_tagged_udp_over_ipv6() {
        let b = PacketBuilder::ethernet2(A, B)
            .single_vlan(etherparse::VlanId::try_new(42).unwrap())
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(5353, 53);
        let mut out = Vec::new();
        b.write(&mut out, b"q").unwrap();
        let f = parse(&out).unwrap();
        assert_eq!(f.vlan, Some(42));
        let Net::Ip(ip) = f.net else { panic!("not ip") };
        assert!(ip.is_v6());
        assert_eq!(ip.l4, L4::Udp { sport: 5353, dport: 53, payload_len: 1 });
    }

    #[test]
    fn reads_the_header_embedded_in_an_icmp_error() {
        // The original packet: UDP 10.0.0.2:53 -> 10.0.0.1:5000, as sent.
        let mut orig = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64).udp(53, 5000).write(&mut orig, b"payload!").unwrap();
        let b = PacketBuilder::ethernet2(A, B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port));
        let mut out = Vec::new();
        b.write(&mut out, &orig[..28]).unwrap();
        let Net::Ip(ip) = parse(&out).unwrap().net else { panic!("not ip") };
        let L4::Icmp(icmp) = ip.l4 else { panic!("not icmp") };
        assert_eq!((icmp.typ, icmp.code, icmp.echo_id), (3, 3, None));
        let inner = icmp.inner().unwrap();
        assert_eq!(
            (inner.src, inner.dst, inner.proto, inner.sport, inner.dport),
            (IpAddr::from([10, 0, 0, 2]), IpAddr::from([10, 0, 0, 1]), UDP, 53, 5000)
        );
    }

    #[test]
    fn reads_arp() {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&A);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&A);
        f.extend_from_slice(&[10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
        let Net::Arp(arp) = parse(&f).unwrap().net else { panic!("not arp") };
        assert_eq!((arp.op, arp.sender_mac, arp.sender_ip, arp.target_ip), (1, A, Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)));
    }

    #[test]
    fn fragments_carry_ports_only_in_the_first_piece() {
        let mut frame = tcp_v4(true);
        // More fragments, offset 0: a first fragment keeps its ports.
        frame[14 + 6] = 0x20;
        let Net::Ip(ip) = parse(&frame).unwrap().net else { panic!() };
        assert!(matches!(ip.l4, L4::Tcp(_)));
        assert_eq!(ip.frag.map(|f| f.offset), Some(0));
        // Offset 8 bytes (1 unit): no ports.
        frame[14 + 6] = 0x00;
        frame[14 + 7] = 0x01;
        let Net::Ip(ip) = parse(&frame).unwrap().net else { panic!() };
        assert_eq!(ip.l4, L4::None);
        assert_eq!(ip.frag.map(|f| f.offset), Some(8));
    }

    #[test]
    fn a_first_fragment_shorter_than_a_udp_header_has_no_ports() {
        // A first UDP fragment of 6 bytes (ports and length, no checksum),
        // both without IP options (the hand-read header) and with one
        // (etherparse): tiny, no transport fields, never a panic. Found by
        // the pipeline fuzzer: the payload length underflowed.
        for options in [false, true] {
            let ihl: u8 = if options { 6 } else { 5 };
            let header = usize::from(ihl) * 4;
            let mut f = vec![0; 14 + header + 6];
            f[..6].copy_from_slice(&B);
            f[6..12].copy_from_slice(&A);
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            let total = u16::from(ihl) * 4 + 6;
            let ip = &mut f[14..];
            ip[0] = 0x40 | ihl;
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip[6] = 0x20; // more fragments, offset 0
            ip[8] = 64;
            ip[9] = UDP;
            ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
            ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
            if options {
                ip[20] = 1; // one NOP and three end-of-options
            }
            let udp = &mut ip[header..];
            udp[..6].copy_from_slice(&[0x13, 0x88, 0, 53, 0, 8]);
            let Net::Ip(ip) = parse(&f).unwrap().net else { panic!("not ip") };
            assert_eq!(ip.l4, L4::None, "options {options}");
            assert_eq!(ip.frag.map(|f| (f.offset, f.len)), Some((0, 6)), "options {options}");
        }
    }

    #[test]
    fn truncated_and_inconsistent_headers_are_malformed() {
        let frame = tcp_v4(true);
        assert_eq!(parse(&frame[..10]), Err(Malformed::Ethernet));
        assert_eq!(parse(&frame[..30]), Err(Malformed::Ip));
        let mut bad_ihl = frame.clone();
        bad_ihl[14] = 0x43;
        assert_eq!(parse(&bad_ihl), Err(Malformed::Ip));
        let mut bad_doff = frame.clone();
        bad_doff[14 + 20 + 12] = 0x20;
        assert_eq!(parse(&bad_doff), Err(Malformed::Transport));
    }

    proptest::proptest! {
        /// The hand-read common IPv4 header gives etherparse's answers:
        /// the same fields, the same refusals. The header's first bytes are
        /// drawn near the common case (version 4, IHL 5), its lengths and
        /// protocol anywhere.
        #[test]
        fn the_common_ipv4_header_reads_as_etherparse_reads_it(
            first in proptest::sample::select(vec![0x45u8, 0x45, 0x45, 0x46, 0x44, 0x55, 0x4f]),
            total in proptest::prop_oneof![0u16..80, proptest::num::u16::ANY],
            proto in proptest::prop_oneof![proptest::sample::select(vec![TCP, UDP, ICMP, AH, 47]), proptest::num::u8::ANY],
            flags in proptest::num::u16::ANY,
            rest in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
            cut in 0usize..100,
        ) {
            let mut b = vec![first, 0];
            b.extend_from_slice(&total.to_be_bytes());
            b.extend_from_slice(&[0x12, 0x34]);
            b.extend_from_slice(&flags.to_be_bytes());
            b.extend_from_slice(&[64, proto, 0, 0, 10, 0, 0, 1, 192, 0, 2, 9]);
            b.extend_from_slice(&rest);
            b.truncate(cut.max(1));
            proptest::prop_assert_eq!(ipv4(&b), ipv4_general(&b));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2048, ..proptest::prelude::ProptestConfig::default() })]

        /// Whenever the flow cache's reader takes a frame, `parse` reads the
        /// same frame from it. Frames are drawn near that shape: TCP, UDP
        /// and ICMP echo (request or reply) over IPv4, with the ethertype,
        /// first byte, protocol, fragment field, total length, data offset,
        /// UDP length, ICMP type and code and the frame's length each
        /// sometimes off.
        #[test]
        fn the_flow_cache_reads_a_frame_as_parse_reads_it(
            shape in 0u8..4,
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            edits in proptest::collection::vec(
                (
                    proptest::prop_oneof![
                        // Ethertype, version and IHL, total length, fragment
                        // field, protocol, ICMP type and code, UDP length
                        // (ICMP echo id), TCP data offset.
                        3 => proptest::sample::select(vec![12usize, 13, 14, 16, 17, 20, 21, 23, 34, 35, 38, 39, 46]),
                        1 => 0usize..60,
                    ],
                    proptest::prop_oneof![
                        proptest::sample::select(vec![0u8, 1, 3, 6, 8, 0x0b, 0x0d, 0x11, 0x20, 0x40, 0x44, 0x45, 0x46, 0x4f, 0x50, 0x60, 0xf0, 0xff]),
                        proptest::num::u8::ANY,
                    ],
                ),
                0..3,
            ),
            cut in proptest::option::of(0usize..120),
            pad in 0usize..20,
        ) {
            let b = PacketBuilder::ethernet2(A, B).ipv4([10, 0, 0, 1], [192, 0, 2, 9], 64);
            let mut f = Vec::new();
            match shape {
                0 => b.tcp(40000, 22, 7, 1000).ack(3).write(&mut f, &payload),
                1 => b.udp(5000, 53).write(&mut f, &payload),
                2 => b.icmpv4_echo_request(0x1234, 9).write(&mut f, &payload),
                _ => b.icmpv4_echo_reply(0x1234, 9).write(&mut f, &payload),
            }
            .expect("frame");
            let clean = flow_v4(&f);
            proptest::prop_assert!(clean.is_some(), "an unedited frame has the shape");
            proptest::prop_assert_eq!(parse(&f), Ok(clean.expect("read").frame()));
            // Ethernet padding, then edits of the header bytes.
            f.extend(std::iter::repeat_n(0, pad));
            for (at, v) in edits {
                if let Some(x) = f.get_mut(at) {
                    *x = v;
                }
            }
            if let Some(n) = cut {
                f.truncate(n);
            }
            if let Some(x) = flow_v4(&f) {
                proptest::prop_assert_eq!(parse(&f), Ok(x.frame()));
            }
        }
    }

    #[test]
    fn the_flow_cache_reader_leaves_other_shapes_to_parse() {
        let ip = || PacketBuilder::ethernet2(A, B).ipv4([10, 0, 0, 1], [192, 0, 2, 9], 64);
        // ICMP other than echo: an error (destination unreachable, port
        // unreachable, with the header it embeds) and a timestamp request.
        let mut unreachable = Vec::new();
        ip().icmpv4_raw(3, 3, [0; 4]).write(&mut unreachable, &tcp_v4(false)[14..42]).expect("frame");
        let mut timestamp = Vec::new();
        ip().icmpv4_raw(13, 0, [0, 1, 0, 1]).write(&mut timestamp, &[0; 12]).expect("frame");
        // An echo too short for its identifier.
        let mut short = Vec::new();
        ip().write(&mut short, etherparse::IpNumber(ICMP), &[8, 0, 0, 0, 0]).expect("frame");
        short.resize(60, 0);
        let mut tagged = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .single_vlan(7.try_into().expect("vlan"))
            .ipv4([10, 0, 0, 1], [192, 0, 2, 9], 64)
            .udp(1, 2)
            .write(&mut tagged, &[0; 8])
            .expect("frame");
        let mut v6 = Vec::new();
        PacketBuilder::ethernet2(A, B).ipv6([0xfd; 16], [0x20; 16], 64).udp(1, 2).write(&mut v6, &[0; 8]).expect("frame");
        let mut frag = tcp_v4(false);
        frag[20] |= 0x20;
        for (what, f) in [("icmp error", unreachable), ("icmp timestamp", timestamp), ("vlan", tagged), ("ipv6", v6), ("fragment", frag)] {
            assert!(parse(&f).is_ok(), "{what} parses");
            assert_eq!(flow_v4(&f), None, "{what}");
        }
        assert_eq!(parse(&short), Err(Malformed::Transport), "a truncated echo is malformed");
        assert_eq!(flow_v4(&short), None, "a truncated echo");
    }

    #[test]
    fn the_flow_cache_reader_reads_an_echo_as_conntrack_keys_it() {
        for (request, typ) in [(true, 8), (false, 0)] {
            let mut f = Vec::new();
            let b = PacketBuilder::ethernet2(A, B).ipv4([10, 0, 0, 1], [192, 0, 2, 9], 64);
            if request { b.icmpv4_echo_request(0x1234, 9) } else { b.icmpv4_echo_reply(0x1234, 9) }.write(&mut f, b"ping").expect("frame");
            let x = flow_v4(&f).expect("an echo has the shape");
            assert_eq!((x.proto, x.sport, x.dport, x.icmp_type, x.icmp_code), (ICMP, 0x1234, 0x1234, typ, 0));
            assert_eq!(parse(&f), Ok(x.frame()));
            let Ok(Frame { net: Net::Ip(ip), .. }) = parse(&f) else { panic!("an IP frame") };
            assert_eq!(ip.ports(), (0x1234, 0x1234), "the identifier twice, as conntrack keys an echo");
        }
    }

    #[test]
    fn every_prefix_of_a_frame_parses_or_fails_cleanly() {
        let frame = tcp_v4(false);
        for n in 0..=frame.len() {
            let _ = parse(&frame[..n]);
        }
    }
}
