//! Security-group policy: the decision contract of `shared/design/semantics.md`.
//!
//! - [`decision`]: what is judged ([`Packet`]: one first packet of a flow, as
//!   seen from a port) and what comes out ([`Decision`]: verdict, what decided,
//!   and the deciding rule's identity).
//! - [`policy`]: [`Policy`], a loaded configuration with group memberships
//!   resolved and each port's groups in binding order.
//! - [`query`]: [`Query`], an operator's question (`sgswitch trace`) resolved
//!   into a `Packet` with the documented defaults.
//! - [`compiled`]: the compiled classifier: per port and direction, an
//!   immutable [`Table`] that answers exactly as the reference, fast; a
//!   [`Compiled`] holds every port's tables for one policy generation.
//! - [`snapshot`]: [`Published`], how a new `Compiled` reaches the poll
//!   loops (an atomic pointer swap; readers never lock).
//! - [`mod@reference`]: the reference evaluator, [`Policy::evaluate`]. It is a
//!   plain, literal reading of the three policy models and stays in the
//!   project as the oracle that faster classifiers are checked against. It is
//!   written to be obviously correct, not fast.
//!
//! # Contract
//! Pure: no I/O, no threads, no clock. A `Policy` is built only from a
//! [`sgswitch_config::Config`] that loaded without errors.
#![forbid(unsafe_code)]

mod bits;
pub mod compiled;
pub mod decision;
pub mod policy;
pub mod query;
pub mod reference;
pub mod snapshot;

pub use compiled::{Compiled, Key, PortTables, Table};
pub use decision::{By, Decision, Packet, RuleRef, Verdict};
pub use policy::{Policy, PortIdx};
pub use query::Query;
pub use sgswitch_config::{Action, Direction, GroupType, PolicyModel};
pub use snapshot::Published;
