//! The datapath's vocabulary, the bottom layer every other one uses: where a
//! frame comes from and goes ([`Source`], [`To`]), what becomes of it and
//! why ([`Action`], [`Reason`] and its [`Kind`], [`Outcome`]), which poll
//! loop owns what ([`Owner`]); the published snapshot of a configuration
//! ([`plan`]); and the counters the pipeline writes ([`stats`]).

pub mod plan;
pub mod stats;

use sgswitch_config::Direction;
use sgswitch_conntrack::Zone;
use sgswitch_filter::{By, Decision, RuleRef};

pub use plan::{MacAddr, PortIdx};

/// Where a frame came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A VM port (its egress).
    Port(PortIdx),
    Uplink,
    /// Handed over by another poll loop: the sender's checks passed there,
    /// and this port's ingress (owned by this loop) is next.
    Peer(PortIdx),
}

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum To {
    Port(PortIdx),
    Uplink,
    /// Every port but `except`, and the uplink unless the frame came from it.
    Flood {
        except: Option<PortIdx>,
        uplink: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Forward(To),
    Drop,
    /// A fragment waiting for its first fragment; its outcome comes later
    /// through the pipeline's `take_released`.
    Held,
    /// The next stage is this port's ingress, and another poll loop owns
    /// the port (and its conntrack zone): hand the frame over to it.
    Handover(PortIdx),
}

/// Declares [`Reason`] and [`Kind`] from one table: each reason, the
/// payload it carries (if any) and the word `replay`, metrics and the flow
/// log use for it. A new reason is one line here.
macro_rules! reasons {
    ($( $(#[$doc:meta])* $name:ident $(($ty:ty))? => $label:literal, )*) => {
        /// Why a frame was forwarded or dropped.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason {
            $( $(#[$doc])* $name $(($ty))?, )*
        }

        /// A [`Reason`] without its payload: what counters are kept by.
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind {
            $( $name, )*
        }

        impl Kind {
            /// Every kind, in counter order.
            pub const ALL: &[Kind] = &[$( Kind::$name, )*];

            /// The word for it (`interfaces.md`'s reasons, and those the
            /// switch adds).
            pub const fn label(self) -> &'static str {
                match self {
                    $( Kind::$name => $label, )*
                }
            }
        }

        impl Reason {
            /// Its kind.
            #[inline]
            pub const fn kind(self) -> Kind {
                match self {
                    $( reasons!(@pat $name $(($ty))?) => Kind::$name, )*
                }
            }
        }
    };
    (@pat $name:ident ($ty:ty)) => { Reason::$name(_) };
    (@pat $name:ident) => { Reason::$name };
}

reasons! {
    /// A packet of a tracked connection.
    Established => "established",
    /// An ICMP error about a tracked connection.
    Related => "related",
    /// A rule decided.
    Rule(RuleRef) => "rule",
    /// Intra-group allow.
    IntraGroup => "intra-group",
    /// No rule matched: the model's default.
    Default => "default",
    /// Anti-spoofing: a frame from a VM that is not its own.
    Spoof => "spoof",
    /// Invalid for its connection's state.
    Invalid => "invalid",
    /// A host-level blocked egress port toward the uplink.
    BlockedEgress => "blocked-egress",
    /// The connection table (or the port's share) was full.
    ConntrackFull => "conntrack-full",
    /// Traffic outside the groups, in its exact shape.
    Infrastructure => "infrastructure",
    /// A fragment, by its datagram's first fragment (or none).
    Fragment => "fragment",
    /// The frame could not be parsed.
    Malformed => "malformed",
    /// An ethertype other than IPv4, IPv6 and ARP.
    NonIp => "non-ip",
    /// Uplink traffic for no port of this host.
    NoPort => "no-port",
    /// An 802.1Q or 802.1ad tagged frame: a VM port is an untagged access
    /// port, and the switch has no VLANs.
    Tagged => "tagged",
}

impl Kind {
    /// How many kinds there are: the size of a counter array by kind.
    pub const COUNT: usize = Kind::ALL.len();

    /// Its index in a counter array.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl Reason {
    /// The word for its kind.
    pub fn as_str(self) -> &'static str {
        self.kind().label()
    }

    /// The reason a policy decision gives.
    pub fn of(d: Decision) -> Reason {
        match d.by {
            By::Rule(r) => Reason::Rule(r),
            By::IntraGroup { .. } => Reason::IntraGroup,
            By::Default => Reason::Default,
        }
    }
}

/// The fate of one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub action: Action,
    pub reason: Reason,
    /// The port whose policy or checks decided, and in which direction.
    pub port: Option<PortIdx>,
    pub direction: Direction,
}

/// A direction's index in a counter array (ingress 0, egress 1).
pub fn dir_ix(d: Direction) -> usize {
    match d {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

/// The poll loop of `loops` that owns `zone` (and the port it belongs to).
pub fn owner_of(zone: Zone, loops: usize) -> usize {
    usize::from(zone) % loops.max(1)
}

/// Which poll loop this is, of how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub index: usize,
    pub loops: usize,
}

impl Owner {
    /// The only loop, owner of every zone (replay, tests).
    pub const ALONE: Owner = Owner { index: 0, loops: 1 };

    /// Whether this loop owns `zone`.
    #[inline]
    pub fn owns(self, zone: Zone) -> bool {
        // One loop owns everything: no division on the per-packet path.
        self.loops <= 1 || owner_of(zone, self.loops) == self.index
    }
}
