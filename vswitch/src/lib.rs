//! The sgswitch datapath: frame parsing, the per-packet pipeline, the
//! snapshot it reads, and the capture replay. The `sgswitch` binary
//! (`main.rs`) is the command line around it.
#![deny(unsafe_code)]

pub mod capture;
pub mod clients;
pub mod control;
pub mod flowcache;
pub mod flowlog;
pub mod infra;
pub mod metrics;
pub mod parse;
pub mod pipeline;
pub mod plan;
pub mod probe;
pub mod replay;
pub mod request;
pub mod run;
pub mod stats;
pub mod xdp;
