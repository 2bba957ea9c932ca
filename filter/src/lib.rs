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
//! - [`mod@reference`]: the reference evaluator, [`Policy::evaluate`]. It is a
//!   plain, literal reading of the three policy models and stays in the
//!   project as the oracle that faster classifiers are checked against. It is
//!   written to be obviously correct, not fast.
//!
//! # The classifier: what was tried, and why bit vectors
//!
//! Measured with `cargo run --release -p sgswitch-benches --bin classify`
//! (`scripts/bench-classify.sh` adds DPDK's rte_acl beside it), single
//! core, median ns per single lookup, on this shared 2-core machine:
//!
//! | step | sg_1000 | ClassBench 1k | ClassBench 10k |
//! |---|---|---|---|
//! | reference evaluator (linear scan of `Rule`s) | 51,000 | 2,700-5,500 | 27,000-60,000 |
//! | bit vectors, binary search per field | 70 | 70-90 | |
//! | + bucket index on the top bits (~1 interval per bucket) | 50 | 60-90 | |
//! | + one row arena, aggregate inline, offsets beside starts | 30 | 40-80 | 51-90 |
//! | DPDK rte_acl, same rules and packets (single / batch of 64) | | 71-131 / 21-79 | 101-260 / 37-169 |
//!
//! Why bit vectors over elementary intervals (Lakshman-Stiliadis, with
//! the aggregated variant of Baboescu-Varghese):
//! - **Address sets are native.** A group reference or prefix list is one
//!   rule with many intervals on one field: one bit, never one rule per
//!   member. Tuple-space search and decision trees would expand a
//!   1,000-member group into 1,000 rules (or 1,000 hash entries).
//! - **Build time and memory are predictable**: one sweep per field, rows
//!   deduplicated; 0.3-1.8 ms and 40-310 KB per 1k-rule table, 2-41 ms and
//!   0.4-15 MB at 10k, against rte_acl's 13-250 ms and 0.5-15 MB at 1k.
//!   Cutting trees (HiCuts, HyperCuts) and RFC are known to blow up in
//!   memory on the wildcard-heavy fw/ipc sets (rte_acl's trie reaches
//!   151 MB and 5.3 s of build on fw1_10k); a reload of 100 ports x 1,000
//!   rules has to fit in 200 ms.
//! - **No collapse**: the cost is the searches (one per field, narrowed by
//!   a bucket index) plus ANDs over the candidate words the aggregates
//!   leave; the spread across ClassBench families is under 2x.
//!
//! Not tried yet, and what would close the remaining gap to rte_acl's
//! batched path (2-3x on acl1/ipc2): SIMD ANDs over several keys at once,
//! and splitting a table by protocol so fewer wildcard rules reach the AND.
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

pub use compiled::{Compiled, Key, PortTables, Table};
pub use decision::{By, Decision, Packet, RuleRef, Verdict};
pub use policy::{Policy, PortIdx};
pub use query::Query;
pub use sgswitch_config::{Action, Direction, GroupType, PolicyModel};
