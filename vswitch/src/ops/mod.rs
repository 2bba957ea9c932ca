//! Operations (layer 6): what operators and their tools talk to. The
//! Prometheus endpoint ([`metrics`]), the control socket `sgswitch ctl`
//! talks to ([`control`]), the flow log's writer ([`flowlog`]), and the
//! bounded client slots the two endpoints share ([`clients`]). Each is
//! given a [`View`] of the running switch (or, for the flow log, its
//! [`flowlog::Handle`]), never the switch's own state.

pub mod clients;
pub mod control;
pub mod flowlog;
pub mod metrics;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use sgswitch_config::Host;

use crate::control::Control;
use crate::control::stop::Stop;
pub use crate::control::unix_ms;
use crate::engine::Loops;

/// What the endpoints read of the running switch, and the two things they
/// may ask of it: a reload ([`Control`]) and a loop's connection state
/// ([`Loops::ask`]).
#[derive(Debug)]
pub struct View {
    pub dir: PathBuf,
    /// `host.toml` as it was at start.
    pub host: Host,
    pub started: SystemTime,
    pub loops: Arc<Loops>,
    pub control: Arc<Control>,
    /// The flow log's counters, per loop, when it is on.
    pub flow_log: Vec<Arc<crate::packet::flowlog::Stats>>,
    pub stop: Arc<Stop>,
}
