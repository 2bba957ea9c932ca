//! The sgswitch program as a library: the datapath, its ports, the poll
//! loops, the control plane and the operator's endpoints, in layers. Each
//! layer uses only those below it (`scripts/check-deps.py` checks):
//!
//! 1. [`datapath`]: the vocabulary (where a frame comes from and goes, what
//!    becomes of it and why), the published snapshot of a configuration
//!    ([`datapath::plan`]) and the pipeline's counters.
//! 2. [`packet`]: the stages a frame goes through, over a batch: parsing,
//!    infrastructure traffic and anti-spoofing, the flow cache, connection
//!    tracking and classification, the forwarding decision. Pure.
//! 3. [`port`]: port I/O. AF_XDP sockets and their UMEM, with frames as
//!    owned values; captures for `replay`. The only `unsafe` code.
//! 4. [`engine`]: the poll loops and forwarding between sockets and loops.
//!    [`control`]: loading, compiling, publishing and reloading
//!    configurations. (Neither uses the other.)
//! 5. [`tools`]: the pipeline for `replay` and for `trace`'s datapath
//!    verdict, and trace requests.
//! 6. [`ops`]: the metrics endpoint, the control socket and the flow log's
//!    writer, each given a narrow view of the switch.
//! 7. [`switch`]: `sgswitch run`, everything put together.
//!
//! The path of a frame: a socket's rx ring ([`port::Rings::receive`])
//! -> the poll loop's batch ([`engine::poll_loop`]) -> the pipeline
//! ([`packet::Pipeline::process_batch`]: parse, infrastructure and
//! spoofing, flow cache or conntrack and the rules, forwarding) -> an
//! [`datapath::Outcome`] -> [`engine::forward`] (a tx ring, copies for a
//! flood, another loop's inbox, the held fragments, or the free list).
#![deny(unsafe_code)]

pub mod control;
pub mod datapath;
pub mod engine;
pub mod ops;
pub mod packet;
pub mod port;
pub mod switch;
pub mod tools;
