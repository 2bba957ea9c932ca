//! Benchmark inputs shared by the benchmark programs and their tests.
//!
//! - [`classbench`]: ClassBench rule sets and traces
//!   (`benches/data/classbench/`, format in its README) as the ingress rules of
//!   one port: source = remote CIDR, destination = local CIDR, source and
//!   destination port ranges, protocol, rule order as priority order (the
//!   `ordered` model, one group, so the first match wins exactly as in
//!   ClassBench).
//! - [`sgshape`]: synthetic policies of realistic security-group shape and
//!   packets drawn from them.
//! - `rte_acl` (feature `rte-acl`): DPDK's classifier through a small C
//!   shim, for comparison. The only unsafe code in the project outside the
//!   datapath's kernel interfaces.
#![deny(unsafe_code)]

pub mod classbench;
pub mod sgshape;

#[cfg(feature = "rte-acl")]
#[allow(unsafe_code, reason = "FFI to DPDK's rte_acl, for comparison only")]
pub mod rte_acl;
