//! The validated configuration: what a directory says once it has loaded
//! without errors. Every value here has passed the checks of [`crate::load_dir`];
//! code that consumes a [`Config`] may rely on the invariants noted on each
//! type.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;

/// A position in a configuration file, 1-based, as editors show it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Loc {
    pub line: u32,
    pub col: u32,
}

/// How the rules of a port's groups are combined (see `semantics.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PolicyModel {
    /// Alibaba ECS: intra-group allow, then all rules merged by priority,
    /// deny before allow at equal priority; default deny in, allow out.
    #[default]
    Priority,
    /// Tencent CVM: groups in binding order, rules top to bottom, first match
    /// decides; default deny both ways.
    Ordered,
    /// AWS / OpenStack: allow-only, any matching rule allows; default deny.
    Union,
}

impl PolicyModel {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyModel::Priority => "priority",
            PolicyModel::Ordered => "ordered",
            PolicyModel::Union => "union",
        }
    }
}

/// What a reload does to tracked connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnPolicyChange {
    #[default]
    Revalidate,
    Keep,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum XdpMode {
    #[default]
    Auto,
    Native,
    Skb,
}

/// `[datapath] fast_path`: whether established UDP flows are forwarded by
/// the interfaces' XDP programs once the loop has judged them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FastPath {
    /// Toward tap devices (whose driver takes redirected frames whatever
    /// the guest runs).
    #[default]
    Auto,
    /// Toward every interface (a veth's peer must run XDP or GRO to take
    /// them: the operator says it does).
    On,
    Off,
}

/// `[datapath] napi_threads`: what the switch does with a NAPI thread
/// (threaded NAPI) of its interfaces that is pinned to a loop's core and
/// that the loop cannot busy poll.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NapiThreads {
    /// Runs it at idle priority while the loop runs, so that the kernel
    /// receives only as fast as the loop takes frames.
    #[default]
    Yield,
    /// Leaves its scheduling as it is.
    Leave,
}

/// `[datapath] core_idle`: what a poll loop's core does when nothing on it
/// has work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CoreIdle {
    /// `Poll` on bare metal, `Leave` on a virtual machine, whose host
    /// places its vCPUs by how busy they are: a vCPU that never idles
    /// moved this machine's two apart more often, where the port path
    /// loses a third of its rate.
    #[default]
    Auto,
    /// It polls (the kernel's polling idle state, asked for by a resume
    /// latency of 0 on the core): a frame that arrives wakes its receiver
    /// without an interrupt, where a halted core (on a virtual machine, a
    /// vCPU the hypervisor descheduled) takes tens of microseconds.
    Poll,
    /// Leaves the core's idle states to the kernel.
    Leave,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ZeroCopy {
    #[default]
    Auto,
    On,
    Off,
}

/// A transport protocol and port range blocked toward the uplink
/// (`blocked_egress = ["tcp/25"]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockedPort {
    pub protocol: u8,
    pub ports: PortRange,
}

/// Whether the poll loops drive their interfaces' receive work themselves
/// (`[datapath] prefer_busy_poll`): `Auto` where the kernel supports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PreferBusyPoll {
    #[default]
    Auto,
    On,
    Off,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datapath {
    pub cores: Vec<usize>,
    pub mode: XdpMode,
    pub zero_copy: ZeroCopy,
    /// Spin in user space when idle instead of waiting on the sockets.
    pub busy_poll: bool,
    /// UMEM frames (2 KiB each) per poll loop, a power of two.
    pub frames: u32,
    /// Entries of each rx, tx, fill and completion ring, a power of two.
    pub ring_size: u32,
    /// Preferred busy polling of the sockets' NAPI contexts.
    pub prefer_busy_poll: PreferBusyPoll,
    /// Frames the kernel receives per busy poll (`SO_BUSY_POLL_BUDGET`).
    pub busy_poll_budget: u32,
    /// The interfaces' `gro_flush_timeout` while busy polled, in µs: how
    /// long the kernel leaves a queue to the loop before it polls it
    /// itself.
    pub gro_flush_timeout_us: u32,
    /// The interfaces' `napi_defer_hard_irqs` while busy polled.
    pub napi_defer_hard_irqs: u32,
    /// How long an idle loop keeps polling before it sleeps, in µs: traffic
    /// that pauses briefly (between bursts) meets a loop still polling.
    pub idle_spin_us: u32,
    pub fast_path: FastPath,
    pub napi_threads: NapiThreads,
    pub core_idle: CoreIdle,
}

impl Default for Datapath {
    fn default() -> Self {
        Datapath {
            cores: vec![0],
            mode: XdpMode::Auto,
            zero_copy: ZeroCopy::Auto,
            busy_poll: false,
            frames: 4096,
            ring_size: 2048,
            prefer_busy_poll: PreferBusyPoll::Auto,
            busy_poll_budget: 64,
            gro_flush_timeout_us: 20,
            napi_defer_hard_irqs: 2,
            idle_spin_us: 50,
            fast_path: FastPath::Auto,
            napi_threads: NapiThreads::Yield,
            core_idle: CoreIdle::Auto,
        }
    }
}

/// Connection-tracking timeouts, in seconds: the connection table's own
/// type, so that the schema's defaults are the table's.
pub use sgswitch_conntrack::Timeouts;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conntrack {
    pub capacity: u32,
    pub per_port_capacity: u32,
    pub tcp_strict: bool,
    pub timeouts: Timeouts,
}

impl Default for Conntrack {
    fn default() -> Self {
        Conntrack { capacity: 1_048_576, per_port_capacity: 65_536, tcp_strict: false, timeouts: Timeouts::default() }
    }
}

/// The limits table of `semantics.md`, every number configurable per host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limits {
    pub rules_per_group: u32,
    pub groups_per_port: u32,
    pub rules_per_port: u32,
    pub group_refs_per_group: u32,
    pub members_per_group: u32,
    /// Highest (numerically largest) priority a rule may carry; 1 is always
    /// the lowest number and the highest priority.
    pub max_priority: u32,
    /// Largest configuration file read, in bytes.
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rules_per_group: 200,
            groups_per_port: 10,
            rules_per_port: 1000,
            group_refs_per_group: 20,
            members_per_group: 6000,
            max_priority: 100,
            max_file_bytes: 16 << 20,
        }
    }
}

/// `host.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub policy_model: PolicyModel,
    pub on_policy_change: OnPolicyChange,
    pub blocked_egress: Vec<BlockedPort>,
    /// Service addresses that bypass the groups (a metadata proxy, say).
    pub infra_allow: Vec<IpNet>,
    /// Addresses whose DHCP and DHCPv6 replies reach VMs (`dhcp_server`),
    /// and to which a VM's unicast DHCP requests pass as infrastructure.
    pub dhcp_server: Vec<IpNet>,
    /// Required only when the datapath runs.
    pub uplink_interface: Option<String>,
    pub datapath: Datapath,
    pub metrics_listen: SocketAddr,
    /// The control socket `sgswitch ctl` talks to (`[control] socket`).
    pub control_socket: PathBuf,
    pub flow_log: FlowLog,
    pub conntrack: Conntrack,
    pub limits: Limits,
    pub reload: Reload,
    pub lint: Lint,
    pub history: History,
    /// `[store]`: the fleet's shared store; `None`, the directory alone.
    pub store: Option<Store>,
}

/// `[store]`: etcd as the source of the groups and prefix lists, and of the
/// other hosts' ports (`docs/fleet.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Store {
    /// `"http://host:port"` or `"https://host:port"`, at least one.
    pub endpoints: Vec<String>,
    /// Every key lives under it: `<prefix>/groups/<id>`, ...
    pub prefix: String,
    /// This host's name in the store (`<prefix>/hosts/<host>/ports/<id>`).
    pub host: String,
    /// The lease this host's ports are published under: they leave every
    /// other host this long after this host stops keeping it alive.
    pub lease_ttl_seconds: u32,
    /// How long a request to etcd may take before the store counts as
    /// unreachable.
    pub timeout_ms: u32,
    /// TLS to the endpoints: CA file, and a client certificate and key.
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Store {
    /// The default host name: the machine's.
    pub fn default_host() -> String {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".into())
    }
}

/// `[history]`: where `run` records each configuration it applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    pub enabled: bool,
    /// The SQLite database (made if missing).
    pub path: PathBuf,
    /// Records older than this are removed (the latest always stays).
    pub retention_days: u32,
    /// Configurations applied within this many seconds of a record's first
    /// one replace it instead of adding another.
    pub coalesce_seconds: u32,
}

impl Default for History {
    fn default() -> Self {
        History { enabled: true, path: PathBuf::from("/var/lib/sgswitch/history.sqlite"), retention_days: 1, coalesce_seconds: 300 }
    }
}

/// `[lint]`: what `check` (and `lint`) report beyond errors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lint {
    /// Report every rule without an `id`.
    pub require_rule_ids: bool,
}

/// `[reload]`: how `run` notices changes to the directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reload {
    /// Reload when the files change (inotify); false: only on SIGHUP and
    /// `sgswitch ctl reload`.
    pub watch: bool,
    /// How long the files must stay unchanged (sizes and modification
    /// times) before a change is applied, in milliseconds.
    pub debounce_ms: u32,
}

impl Default for Reload {
    fn default() -> Self {
        Reload { watch: true, debounce_ms: 500 }
    }
}

/// Where the flow log of denied packets goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowLogTo {
    Stderr,
    /// A file, appended to.
    File(PathBuf),
}

/// `[flow_log]`: one line per denied flow, rate-limited and sampled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowLog {
    pub enabled: bool,
    pub to: FlowLogTo,
    /// Lines per second at most (a token bucket of `burst` lines).
    pub rate: u32,
    pub burst: u32,
    /// Log one denied flow in `sample`.
    pub sample: u32,
    /// A flow is logged at most once per this many seconds.
    pub repeat_after: u32,
}

impl Default for FlowLog {
    fn default() -> Self {
        FlowLog { enabled: false, to: FlowLogTo::Stderr, rate: 100, burst: 200, sample: 1, repeat_after: 10 }
    }
}

impl Default for Host {
    fn default() -> Self {
        Host {
            policy_model: PolicyModel::Priority,
            on_policy_change: OnPolicyChange::Revalidate,
            blocked_egress: vec![BlockedPort { protocol: 6, ports: PortRange { start: 25, end: 25 } }],
            infra_allow: Vec::new(),
            dhcp_server: Vec::new(),
            uplink_interface: None,
            datapath: Datapath::default(),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9469)),
            control_socket: PathBuf::from("/run/sgswitch/control.sock"),
            flow_log: FlowLog::default(),
            conntrack: Conntrack::default(),
            limits: Limits::default(),
            reload: Reload::default(),
            lint: Lint::default(),
            history: History::default(),
            store: None,
        }
    }
}

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A reference to another object by id, with where it was written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdRef {
    pub id: String,
    pub loc: Loc,
}

/// `ports/<id>.toml`: one VM network interface.
///
/// # Invariants
/// `ipv4` holds only IPv4 networks and `ipv6` only IPv6 ones; the port's
/// groups exist, are 1..=`groups_per_port`, distinct, and all of one type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub id: String,
    pub file: PathBuf,
    pub interface: Option<String>,
    /// `kind = "vhost-user"`: the port is a vhost-user socket, not an
    /// interface.
    pub vhost_user: Option<VhostUser>,
    pub mac: Option<Mac>,
    pub ipv4: Vec<IpNet>,
    pub ipv6: Vec<IpNet>,
    pub security_groups: Vec<IdRef>,
    pub spoof_check: bool,
    /// IPv6 link-local addresses the VM may send from besides the EUI-64
    /// address of its MAC (`link_local`); each is in fe80::/10.
    pub link_local: Vec<std::net::Ipv6Addr>,
    pub allow_blocked_egress: bool,
    /// The port's `[conntrack.timeouts]`, over the host's: `None` when the
    /// port file sets none.
    pub conntrack_timeouts: Option<Timeouts>,
}

impl Port {
    /// The connection-tracking timeouts of the port's flows: its own, or
    /// the host's.
    pub fn timeouts(&self, host: &Host) -> Timeouts {
        self.conntrack_timeouts.unwrap_or(host.conntrack.timeouts)
    }

    /// Every address or prefix the port owns, IPv4 first.
    pub fn addresses(&self) -> impl Iterator<Item = &IpNet> {
        self.ipv4.iter().chain(&self.ipv6)
    }

    /// The port's first address of the family of `like`: the default local
    /// side of a traced packet.
    pub fn first_address_like(&self, like: IpAddr) -> Option<IpAddr> {
        let list = if like.is_ipv4() { &self.ipv4 } else { &self.ipv6 };
        list.first().map(|n| n.addr())
    }
}

/// A vhost-user port's socket (`socket`, `socket_mode`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VhostUser {
    /// The unix socket the guest's device and the switch meet on.
    pub socket: PathBuf,
    /// `socket_mode = "client"`: the switch connects to a socket the VMM
    /// listens on (and again after the VMM restarts); `"server"` (the
    /// default): the switch listens and the VMM connects.
    pub client: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GroupType {
    #[default]
    Basic,
    Enterprise,
}

impl GroupType {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupType::Basic => "basic",
            GroupType::Enterprise => "enterprise",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IntraGroup {
    #[default]
    Accept,
    Drop,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    #[default]
    Ingress,
    Egress,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Listed first so that `Deny < Allow`: at equal priority, deny sorts first.
    Deny,
    #[default]
    Allow,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// The protocol a rule matches: `None` is `all`, otherwise an IP protocol
/// number (tcp 6, udp 17, icmp 1, icmpv6 58, gre 47).
pub type Protocol = Option<u8>;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;
pub const GRE: u8 = 47;

/// The name of a protocol as the configuration writes it.
pub fn protocol_name(p: Protocol) -> String {
    match p {
        None => "all".into(),
        Some(TCP) => "tcp".into(),
        Some(UDP) => "udp".into(),
        Some(ICMP) => "icmp".into(),
        Some(ICMPV6) => "icmpv6".into(),
        Some(GRE) => "gre".into(),
        Some(n) => n.to_string(),
    }
}

/// Parses a protocol as written in a rule or on the command line: a name or
/// a number 0..=255. `all` gives `Some(None)`.
pub fn parse_protocol(s: &str) -> Option<Protocol> {
    Some(match s {
        "all" => None,
        "tcp" => Some(TCP),
        "udp" => Some(UDP),
        "icmp" => Some(ICMP),
        "icmpv6" => Some(ICMPV6),
        "gre" => Some(GRE),
        n => Some(n.parse::<u8>().ok()?),
    })
}

/// An inclusive port range, `start <= end`, both in 1..=65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn contains(self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.start, self.end)
    }
}

/// The remote side of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Remote {
    Cidr(IpNet),
    /// The members of a security group.
    Group(String),
    /// The entries of a prefix list.
    PrefixList(String),
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Remote::Cidr(n) => n.fmt(f),
            Remote::Group(id) | Remote::PrefixList(id) => f.write_str(id),
        }
    }
}

/// One `[[ingress]]` or `[[egress]]` entry.
///
/// # Invariants
/// Port ranges only with tcp/udp; ICMP type/code only with icmp/icmpv6 and a
/// code only with a type; CIDRs of `remote` and `local` are of one family and
/// agree with an icmp/icmpv6 protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Where the rule's table starts in its group file.
    pub loc: Loc,
    /// The rule's own name, unique in its group (both directions): when
    /// given, metrics, the flow log, `trace` and `replay` name the rule by
    /// it instead of its position, so inserting a rule renumbers nothing.
    pub id: Option<String>,
    pub priority: u8,
    pub action: Action,
    pub protocol: Protocol,
    /// Destination port range; `None` is `-1/-1`, every port.
    pub ports: Option<PortRange>,
    pub source_ports: Option<PortRange>,
    pub remote: Remote,
    /// Where `remote` was written, for messages about what it references.
    pub remote_loc: Loc,
    /// Which of the port's own addresses the rule applies to.
    pub local: Option<IpNet>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    pub description: String,
}

impl Default for Remote {
    fn default() -> Self {
        Remote::Cidr(IpNet::default())
    }
}

/// `groups/<id>.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    pub file: PathBuf,
    pub name: String,
    pub description: String,
    pub kind: GroupType,
    /// Always `Drop` for enterprise groups.
    pub intra_group: IntraGroup,
    pub remote_members: Vec<IpNet>,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

impl Group {
    /// How metrics, the flow log, `trace`, `replay`, `lint` and `export`
    /// name rule `index` of direction `d`: `<group>/<direction>/<id>`, or
    /// `<group>/<direction>/<index>` for a rule without an `id`.
    pub fn rule_name(&self, d: Direction, index: usize) -> String {
        match self.rules(d).get(index).and_then(|r| r.id.as_deref()) {
            Some(id) => format!("{}/{}/{id}", self.id, d.as_str()),
            None => format!("{}/{}/{index}", self.id, d.as_str()),
        }
    }

    pub fn rules(&self, d: Direction) -> &[Rule] {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// `prefix-lists/<id>.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixList {
    pub id: String,
    pub file: PathBuf,
    pub max_entries: u32,
    pub entries: Vec<IpNet>,
}

/// A whole configuration directory. Ports, groups and prefix lists are
/// sorted by id; ids are unique within each kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub dir: PathBuf,
    pub host: Host,
    pub ports: Vec<Port>,
    pub groups: Vec<Group>,
    pub prefix_lists: Vec<PrefixList>,
    /// Things that load but an operator would want to know about.
    pub warnings: Vec<crate::ConfigError>,
    /// The files read, as (path relative to `dir`, text), in the order
    /// read: what the history records. Take them (`std::mem::take`) to
    /// keep them no longer than needed.
    pub sources: Vec<(String, String)>,
    /// With a store: what the other hosts' ports added to the groups.
    pub fleet: Option<Fleet>,
}

/// The texts a store holds for a configuration: groups and prefix lists,
/// and the ports every other host published, each with its key (which
/// names it in messages, as a path names a file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overlay {
    pub groups: Vec<Stored>,
    pub prefix_lists: Vec<Stored>,
    /// Ports of other hosts (not this one's: those come from its
    /// directory), each read once when it was published
    /// ([`crate::read_remote_port`]), indexed once per change of them and
    /// shared between loads.
    pub remote: std::sync::Arc<crate::OtherHosts>,
    /// The host this configuration is for.
    pub host: String,
}

/// One text of the store: its key (`<prefix>/groups/sg-web`), the id it
/// is stored under (the key's last part) and the TOML.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub key: String,
    pub id: String,
    pub text: String,
}

/// Another host's published port, as read: what it adds to groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemotePort {
    pub host: String,
    /// The key it is stored under (names it in messages).
    pub key: String,
    /// Its id, addresses and groups; or why it does not read.
    pub read: Result<Claimed, String>,
}

/// The parts of another host's port that matter here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    pub id: String,
    pub addresses: Vec<IpNet>,
    pub groups: Vec<String>,
}

/// What the other hosts' ports did to this configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fleet {
    /// Ports of other hosts read (valid ones).
    pub remote_ports: usize,
    /// Addresses claimed by ports on two hosts (or more): neither claim
    /// makes the address a member of any group until one is withdrawn.
    pub conflicts: Vec<Conflict>,
    /// The addresses of this host's own ports that a conflict withholds
    /// from their groups' members.
    pub withheld: Vec<IpNet>,
}

/// Ports on different hosts that claim overlapping addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub address: IpNet,
    /// `<host>/<port-id>` of each claim, sorted.
    pub claims: Vec<String>,
}

impl Config {
    pub fn port(&self, id: &str) -> Option<&Port> {
        self.ports.iter().find(|p| p.id == id)
    }

    pub fn group(&self, id: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.id == id)
    }

    pub fn prefix_list(&self, id: &str) -> Option<&PrefixList> {
        self.prefix_lists.iter().find(|p| p.id == id)
    }

    /// How many rules a rule counts for against the limits: a rule that
    /// references a prefix list counts as the list's `max_entries`.
    pub fn rule_weight(&self, rule: &Rule) -> u32 {
        match &rule.remote {
            Remote::PrefixList(id) => self.prefix_list(id).map_or(1, |p| p.max_entries.max(1)),
            _ => 1,
        }
    }

    /// How many rules a group counts for against the limits: the weights of
    /// its ingress and egress rules together.
    pub fn group_weight(&self, group: &Group) -> u32 {
        group.ingress.iter().chain(&group.egress).fold(0u32, |n, r| n.saturating_add(self.rule_weight(r)))
    }
}
