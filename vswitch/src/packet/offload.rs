//! Checksums a VM left for the host to finish.
//!
//! A guest whose virtio-net NIC offers checksum offload (QEMU's default)
//! sends TCP and UDP segments with the checksum field holding only the sum
//! of the pseudo-header, and a flag in the virtio header saying the host
//! must finish it. The flag does not reach an AF_XDP socket; the frame
//! does. Forwarded as it is, it would be dropped by whoever receives it.
//!
//! The unfinished field is recognisable exactly: it equals the folded
//! pseudo-header sum (the kernel writes `~csum_tcpudp_magic(.., 0)`). A
//! frame whose field has that value gets its checksum computed over the
//! segment, as the kernel's `skb_checksum_help` would. A frame whose
//! correct checksum happens to have that value (one in 65,536) is
//! recomputed to the same value, so the test needs no other evidence, and
//! is not counted as finished.
//!
//! Only untagged IPv4 (not a fragment) and IPv6 (no extension header)
//! TCP and UDP, with lengths that fit the frame: anything else is left
//! as it is. Never panics, whatever the bytes.

const TCP: u8 = 6;
const UDP: u8 = 17;

/// Adds the big-endian 16-bit words of `b` (an odd last byte padded with
/// zero) to `sum`.
#[inline]
fn add_words(mut sum: u64, b: &[u8]) -> u64 {
    let mut words = b.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// The ones' complement sum folded to 16 bits.
#[inline]
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    (sum & 0xffff) as u16
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Finishes the TCP or UDP checksum of `frame` if the sender left it
/// unfinished; whether it did (the field changed).
pub fn finish_checksum(frame: &mut [u8]) -> bool {
    let Some((l4, len, proto, pseudo)) = segment(frame) else { return false };
    let at = l4 + if proto == TCP { 16 } else { 6 };
    let Some(field) = be16(frame, at) else { return false };
    let unfinished = fold(pseudo);
    // 0x0000 and 0xffff are the same number in ones' complement.
    if field != unfinished && !(field | unfinished == 0xffff && field & unfinished == 0) {
        return false;
    }
    let Some(seg) = frame.get_mut(l4..l4 + len) else { return false };
    seg[at - l4] = 0;
    seg[at - l4 + 1] = 0;
    let mut sum = !fold(add_words(pseudo, seg));
    if proto == UDP && sum == 0 {
        sum = 0xffff; // zero means "no checksum" in UDP
    }
    seg[at - l4..at - l4 + 2].copy_from_slice(&sum.to_be_bytes());
    // A correct checksum that equals the pseudo-header sum is written back
    // as it was: nothing was left unfinished.
    sum != field
}

/// Where the TCP or UDP segment of `frame` starts, its length, its
/// protocol and the sum of its pseudo-header.
fn segment(frame: &[u8]) -> Option<(usize, usize, u8, u64)> {
    const IP: usize = 14;
    let (l4, len, proto, addrs) = match be16(frame, 12)? {
        0x0800 => {
            let vihl = *frame.get(IP)?;
            let ihl = usize::from(vihl & 0x0f) * 4;
            if vihl >> 4 != 4 || ihl < 20 || be16(frame, IP + 6)? & 0x3fff != 0 {
                return None;
            }
            let total = usize::from(be16(frame, IP + 2)?);
            (IP + ihl, total.checked_sub(ihl)?, *frame.get(IP + 9)?, frame.get(IP + 12..IP + 20)?)
        }
        0x86dd => {
            let len = usize::from(be16(frame, IP + 4)?);
            (IP + 40, len, *frame.get(IP + 6)?, frame.get(IP + 8..IP + 40)?)
        }
        _ => return None,
    };
    let header = match proto {
        TCP => 20,
        UDP => 8,
        _ => return None,
    };
    if len < header || frame.len() < l4 + len {
        return None;
    }
    let pseudo = add_words(u64::from(proto) + len as u64, addrs);
    Some((l4, len, proto, pseudo))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A frame with a correct checksum: IPv4 or IPv6, TCP or UDP.
    fn frame(v6: bool, tcp: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        let l4_len = if tcp { 20 } else { 8 } + payload.len();
        let proto = if tcp { TCP } else { UDP };
        if v6 {
            f.extend([0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend(u16::try_from(l4_len).expect("short").to_be_bytes());
            f.extend([proto, 64]);
            f.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11]);
            f.extend([0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x21]);
        } else {
            f.extend([0x08, 0x00, 0x45, 0]);
            f.extend(u16::try_from(20 + l4_len).expect("short").to_be_bytes());
            f.extend([0, 1, 0x40, 0, 64, proto, 0, 0, 10, 0, 0, 11, 10, 0, 1, 21]);
        }
        let l4 = f.len();
        if tcp {
            f.extend([0x9c, 0x40, 0x15, 0x38, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
        } else {
            f.extend([0x9c, 0x40, 0, 53]);
            f.extend(u16::try_from(l4_len).expect("short").to_be_bytes());
            f.extend([0, 0]);
        }
        f.extend(payload);
        let (_, len, _, pseudo) = segment(&f).expect("a segment");
        let mut sum = !fold(add_words(pseudo, &f[l4..l4 + len]));
        if !tcp && sum == 0 {
            sum = 0xffff;
        }
        let at = l4 + if tcp { 16 } else { 6 };
        f[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        f
    }

    /// What a guest with checksum offload sends: the pseudo-header sum.
    fn unfinished(mut f: Vec<u8>, tcp: bool) -> Vec<u8> {
        let (l4, _, _, pseudo) = segment(&f).expect("a segment");
        let at = l4 + if tcp { 16 } else { 6 };
        f[at..at + 2].copy_from_slice(&fold(pseudo).to_be_bytes());
        f
    }

    /// The checksum of a finished segment verifies: the sum over the
    /// pseudo-header and the segment is 0xffff.
    fn verifies(f: &[u8]) -> bool {
        let (l4, len, _, pseudo) = segment(f).expect("a segment");
        fold(add_words(pseudo, &f[l4..l4 + len])) == 0xffff
    }

    #[test]
    fn an_unfinished_checksum_is_finished_and_a_finished_one_is_left() {
        for v6 in [false, true] {
            for tcp in [false, true] {
                let good = frame(v6, tcp, b"hello, odd length");
                assert!(verifies(&good), "the test's own frame (v6 {v6}, tcp {tcp})");
                let mut f = good.clone();
                assert!(!finish_checksum(&mut f), "a correct checksum is not touched (v6 {v6}, tcp {tcp})");
                assert_eq!(f, good);
                let mut f = unfinished(good.clone(), tcp);
                assert!(!verifies(&f));
                assert!(finish_checksum(&mut f), "v6 {v6}, tcp {tcp}");
                assert_eq!(f, good, "v6 {v6}, tcp {tcp}");
            }
        }
    }

    /// A correct checksum that happens to equal the pseudo-header sum (one
    /// in 65,536 frames) is recomputed to itself: nothing was finished, and
    /// the port must not be taken for one that leaves its checksums.
    #[test]
    fn a_correct_checksum_equal_to_the_pseudo_header_sum_is_not_counted() {
        for (v6, tcp) in [(false, true), (false, false), (true, true), (true, false)] {
            // The last two payload bytes chosen so that the correct
            // checksum is the pseudo-header sum.
            let f = (0..=u16::MAX)
                .map(|w| frame(v6, tcp, &w.to_be_bytes()))
                .find(|f| {
                    let (l4, _, _, pseudo) = segment(f).expect("a segment");
                    let at = l4 + if tcp { 16 } else { 6 };
                    f[at..at + 2] == fold(pseudo).to_be_bytes()
                })
                .expect("some payload gives it");
            let mut g = f.clone();
            assert!(!finish_checksum(&mut g), "v6 {v6}, tcp {tcp}: a correct checksum is not counted as finished");
            assert_eq!(g, f);
        }
    }

    #[test]
    fn fragments_other_protocols_and_short_frames_are_left_alone() {
        let mut frag = unfinished(frame(false, true, b"x"), true);
        frag[14 + 6] = 0x20; // more fragments
        let before = frag.clone();
        assert!(!finish_checksum(&mut frag));
        assert_eq!(frag, before);
        let mut icmp = unfinished(frame(false, true, b"x"), true);
        icmp[14 + 9] = 1;
        assert!(!finish_checksum(&mut icmp));
        let whole = unfinished(frame(true, false, b"payload"), false);
        for cut in 0..whole.len() {
            let mut short = whole[..cut].to_vec();
            assert!(!finish_checksum(&mut short), "cut at {cut}");
        }
    }

    proptest! {
        #[test]
        fn any_bytes_are_safe(mut bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = finish_checksum(&mut bytes);
        }

        #[test]
        fn any_segment_round_trips(v6: bool, tcp: bool, payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let good = frame(v6, tcp, &payload);
            prop_assert!(verifies(&good));
            let mut f = unfinished(good.clone(), tcp);
            finish_checksum(&mut f);
            prop_assert_eq!(f, good);
        }
    }
}
