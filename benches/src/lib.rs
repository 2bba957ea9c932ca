//! Benchmark inputs shared by the benchmark programs and their tests.
//!
//! - [`classbench`]: ClassBench rule sets and traces
//!   (`shared/data/classbench/`, format in its README) as the ingress rules of
//!   one port: source = remote CIDR, destination = local CIDR, source and
//!   destination port ranges, protocol, rule order as priority order (the
//!   `ordered` model, one group, so the first match wins exactly as in
//!   ClassBench).
//! - [`sgshape`]: synthetic policies of realistic security-group shape and
//!   packets drawn from them.
#![forbid(unsafe_code)]

pub mod classbench;
pub mod sgshape;
