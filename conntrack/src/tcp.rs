//! The TCP state machine: one pure function from (state, direction, segment
//! kind) to what happens.
//!
//! # Design
//! The states are those of `semantics.md` (Linux's names). Direction is
//! `Orig` (the side that opened the flow) or `Reply`. A FIN records which side
//! closed first, because the closing sequence reads differently from each
//! side: FIN_WAIT (one FIN seen) -> CLOSE_WAIT (the other side ACKed it) ->
//! LAST_ACK (the other side's FIN) -> TIME_WAIT (the first closer ACKed that).
//!
//! Segments that make no sense for the state are [`Step::Invalid`]: a SYN-ACK
//! with no SYN seen, an ACK before the handshake answered, data before the
//! handshake in strict mode. Retransmissions are valid and change nothing.
//!
//! # Sequence numbers (liberal, as Linux with `nf_conntrack_tcp_be_liberal`)
//! Only RST segments are checked: an RST is accepted when its sequence number
//! is within [`RST_WINDOW`] of the next sequence number last seen from its
//! sender (modulo 2^32), which defeats blind resets without tracking window
//! scaling. Other segments are not window-checked.

/// The side of a flow a packet comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The side that sent the first packet.
    Orig,
    /// The other side.
    Reply,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Orig => Side::Reply,
            Side::Reply => Side::Orig,
        }
    }
}

/// TCP connection states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TcpState {
    SynSent,
    SynRecv,
    Established,
    FinWait,
    CloseWait,
    LastAck,
    TimeWait,
    Close,
}

/// What a segment is, from its flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    Syn,
    SynAck,
    Fin,
    Ack,
    Rst,
    /// A flag combination no stack sends (no flags, SYN+FIN, SYN+RST, …).
    Bogus,
}

/// TCP header flag bits as on the wire.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

impl Segment {
    /// Classifies the flags byte of a TCP header.
    pub fn from_flags(f: u8) -> Segment {
        use flags::*;
        let syn = f & SYN != 0;
        let ack = f & ACK != 0;
        let fin = f & FIN != 0;
        let rst = f & RST != 0;
        match (syn, ack, fin, rst) {
            (true, _, true, _) | (true, _, _, true) => Segment::Bogus,
            (true, false, _, _) => Segment::Syn,
            (true, true, _, _) => Segment::SynAck,
            (false, _, _, true) => Segment::Rst,
            (false, _, true, _) => Segment::Fin,
            (false, true, false, false) => Segment::Ack,
            (false, false, false, false) => Segment::Bogus,
        }
    }
}

/// The outcome of one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Valid: the connection is now in this state (possibly the same one).
    To(TcpState),
    /// Makes no sense for the state: drop and count as `invalid`.
    Invalid,
}

/// How far from the sender's last sequence number an RST may be.
pub const RST_WINDOW: u32 = 1 << 20;

/// The state of a flow whose first packet seen is `seg` from the opener.
/// `None` means no entry may be created (invalid as a first packet).
///
/// A SYN opens. Any other packet but SYN-ACK, RST and bogus ones is a
/// mid-stream pick-up (after a restart, say): allowed unless `strict`.
pub fn first(seg: Segment, strict: bool) -> Option<TcpState> {
    match seg {
        Segment::Syn => Some(TcpState::SynSent),
        Segment::Ack | Segment::Fin if !strict => Some(TcpState::Established),
        _ => None,
    }
}

/// The next state after `seg` from `side`, in `state`. `closer` is the side
/// that sent the first FIN (meaningful from FIN_WAIT on). `has_data`: the
/// segment carries payload.
pub fn step(state: TcpState, side: Side, seg: Segment, closer: Side, has_data: bool, strict: bool) -> Step {
    use Segment::*;
    use Side::*;
    use TcpState::*;
    let to = Step::To;
    match (state, side, seg) {
        (_, _, Bogus) => Step::Invalid,
        (_, _, Rst) => to(Close),

        (SynSent, Orig, Syn) => to(SynSent),
        (SynSent, Reply, SynAck) => to(SynRecv),
        // Simultaneous open: both sides sent a SYN.
        (SynSent, Reply, Syn) => to(SynRecv),
        (SynSent, Orig, Ack) if strict || has_data => Step::Invalid,
        (SynSent, _, _) => Step::Invalid,

        (SynRecv, Orig, Ack) => to(Established),
        // Simultaneous open: the reply side ACKs our SYN-ACK.
        (SynRecv, Reply, Ack) => to(Established),
        (SynRecv, _, Syn | SynAck) => to(SynRecv),
        (SynRecv, _, Fin) => to(FinWait),

        (Established, _, Ack) => to(Established),
        (Established, _, Fin) => to(FinWait),
        // A late retransmission of the handshake.
        (Established, Reply, SynAck) => to(Established),
        (Established, _, Syn | SynAck) => Step::Invalid,

        (FinWait, s, Ack) if s != closer => to(CloseWait),
        (FinWait, s, Fin) if s != closer => to(LastAck),
        (FinWait, _, Ack | Fin) => to(FinWait),

        (CloseWait, s, Fin) if s != closer => to(LastAck),
        (CloseWait, _, Ack | Fin) => to(CloseWait),

        (LastAck, s, Ack) if s == closer => to(TimeWait),
        (LastAck, _, Ack | Fin) => to(LastAck),

        (TimeWait, _, Ack | Fin) => to(TimeWait),
        // Port reuse: a new SYN from the opener after the close.
        (TimeWait | Close, Orig, Syn) => to(SynSent),
        (FinWait | CloseWait | LastAck | TimeWait | Close, _, Syn | SynAck) => Step::Invalid,
        (Close, _, Ack | Fin) => Step::Invalid,
    }
}

/// Whether an RST with sequence number `seq` is acceptable, given `next`,
/// the sequence number that side was last seen to send next.
pub fn rst_in_window(seq: u32, next: u32) -> bool {
    let d = seq.wrapping_sub(next);
    d < RST_WINDOW || d.wrapping_neg() <= RST_WINDOW
}

#[cfg(test)]
mod tests {
    use super::Segment::*;
    use super::Side::*;
    use super::TcpState::*;
    use super::*;

    fn go(state: TcpState, side: Side, seg: Segment, closer: Side) -> Step {
        step(state, side, seg, closer, false, false)
    }

    #[test]
    fn flags_classify_like_a_stack_sends_them() {
        use flags::*;
        assert_eq!(Segment::from_flags(SYN), Syn);
        assert_eq!(Segment::from_flags(SYN | ACK), SynAck);
        assert_eq!(Segment::from_flags(ACK), Ack);
        assert_eq!(Segment::from_flags(ACK | 0x08), Ack, "PSH is data");
        assert_eq!(Segment::from_flags(FIN | ACK), Fin);
        assert_eq!(Segment::from_flags(RST | ACK), Rst);
        assert_eq!(Segment::from_flags(0), Bogus);
        assert_eq!(Segment::from_flags(SYN | FIN), Bogus);
        assert_eq!(Segment::from_flags(SYN | RST), Bogus);
    }

    #[test]
    fn first_packet_opens_or_picks_up_or_is_invalid() {
        assert_eq!(first(Syn, false), Some(SynSent));
        assert_eq!(first(Ack, false), Some(Established), "mid-stream pick-up");
        assert_eq!(first(Fin, false), Some(Established));
        assert_eq!(first(Ack, true), None, "strict mode: no pick-up");
        assert_eq!(first(SynAck, false), None, "a SYN-ACK with no SYN seen");
        assert_eq!(first(Rst, false), None);
        assert_eq!(first(Bogus, false), None);
    }

    /// Every transition, as (state, side, segment, closer, expected).
    #[test]
    fn transition_table() {
        let i = Step::Invalid;
        let t = Step::To;
        let table: &[(TcpState, Side, Segment, Side, Step)] = &[
            // Three-way handshake.
            (SynSent, Orig, Syn, Orig, t(SynSent)), // retransmitted SYN
            (SynSent, Reply, SynAck, Orig, t(SynRecv)),
            (SynSent, Reply, Syn, Orig, t(SynRecv)), // simultaneous open
            (SynSent, Orig, Ack, Orig, i),           // ACK before the SYN-ACK
            (SynSent, Reply, Ack, Orig, i),
            (SynSent, Orig, SynAck, Orig, i),
            (SynSent, Orig, Fin, Orig, i),
            (SynSent, Reply, Fin, Orig, i),
            (SynRecv, Orig, Ack, Orig, t(Established)),
            (SynRecv, Reply, Ack, Orig, t(Established)), // simultaneous open
            (SynRecv, Reply, SynAck, Orig, t(SynRecv)),  // retransmitted SYN-ACK
            (SynRecv, Orig, Syn, Orig, t(SynRecv)),
            (SynRecv, Orig, SynAck, Orig, t(SynRecv)), // simultaneous open
            (SynRecv, Orig, Fin, Orig, t(FinWait)),
            (SynRecv, Reply, Fin, Orig, t(FinWait)),
            // Established.
            (Established, Orig, Ack, Orig, t(Established)),
            (Established, Reply, Ack, Orig, t(Established)),
            (Established, Orig, Fin, Orig, t(FinWait)),
            (Established, Reply, Fin, Orig, t(FinWait)),
            (Established, Reply, SynAck, Orig, t(Established)),
            (Established, Orig, Syn, Orig, i),
            (Established, Orig, SynAck, Orig, i),
            // Close initiated by Orig.
            (FinWait, Orig, Ack, Orig, t(FinWait)),
            (FinWait, Orig, Fin, Orig, t(FinWait)), // retransmitted FIN
            (FinWait, Reply, Ack, Orig, t(CloseWait)),
            (FinWait, Reply, Fin, Orig, t(LastAck)),     // FIN+ACK together
            (CloseWait, Reply, Ack, Orig, t(CloseWait)), // half-close: data flows on
            (CloseWait, Orig, Ack, Orig, t(CloseWait)),
            (CloseWait, Reply, Fin, Orig, t(LastAck)),
            (CloseWait, Orig, Fin, Orig, t(CloseWait)),
            (LastAck, Orig, Ack, Orig, t(TimeWait)),
            (LastAck, Reply, Ack, Orig, t(LastAck)),
            (LastAck, Reply, Fin, Orig, t(LastAck)),
            (TimeWait, Orig, Ack, Orig, t(TimeWait)),
            (TimeWait, Reply, Fin, Orig, t(TimeWait)),
            (TimeWait, Orig, Syn, Orig, t(SynSent)), // port reuse
            (TimeWait, Reply, Syn, Orig, i),
            // Close initiated by Reply reads the other way round.
            (FinWait, Orig, Ack, Reply, t(CloseWait)),
            (FinWait, Reply, Ack, Reply, t(FinWait)),
            (CloseWait, Orig, Fin, Reply, t(LastAck)),
            (LastAck, Reply, Ack, Reply, t(TimeWait)),
            (LastAck, Orig, Ack, Reply, t(LastAck)),
            // After RST.
            (Close, Orig, Ack, Orig, i),
            (Close, Reply, Fin, Orig, i),
            (Close, Orig, Syn, Orig, t(SynSent)),
            (Close, Reply, SynAck, Orig, i),
            // Handshake segments after the close are invalid.
            (FinWait, Orig, Syn, Orig, i),
            (CloseWait, Reply, SynAck, Orig, i),
            (LastAck, Orig, Syn, Orig, i),
        ];
        for &(state, side, seg, closer, want) in table {
            assert_eq!(go(state, side, seg, closer), want, "{state:?} + {side:?} {seg:?} (closer {closer:?})");
        }
    }

    #[test]
    fn rst_closes_every_state_from_either_side() {
        for s in [SynSent, SynRecv, Established, FinWait, CloseWait, LastAck, TimeWait, Close] {
            for side in [Orig, Reply] {
                assert_eq!(go(s, side, Rst, Orig), Step::To(Close), "{s:?} {side:?}");
            }
        }
    }

    #[test]
    fn bogus_flags_are_invalid_in_every_state() {
        for s in [SynSent, SynRecv, Established, FinWait, CloseWait, LastAck, TimeWait, Close] {
            assert_eq!(go(s, Orig, Bogus, Orig), Step::Invalid);
        }
    }

    #[test]
    fn strict_mode_refuses_data_before_the_handshake() {
        assert_eq!(step(SynSent, Orig, Ack, Orig, true, false), Step::Invalid);
        assert_eq!(step(SynSent, Orig, Ack, Orig, false, true), Step::Invalid);
        // The third packet of the handshake may carry data.
        assert_eq!(step(SynRecv, Orig, Ack, Orig, true, true), Step::To(Established));
    }

    #[test]
    fn rst_window_accepts_near_and_refuses_far_sequence_numbers() {
        assert!(rst_in_window(1000, 1000));
        assert!(rst_in_window(1000 + RST_WINDOW - 1, 1000));
        assert!(rst_in_window(1000u32.wrapping_sub(RST_WINDOW), 1000), "behind, across the wrap");
        assert!(rst_in_window(5, u32::MAX - 5), "wraps around 2^32");
        assert!(!rst_in_window(1000 + RST_WINDOW, 1000));
        assert!(!rst_in_window(1000 + (1 << 31), 1000));
    }
}
