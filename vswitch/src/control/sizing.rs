//! How much memory the connection tables take, and whether the machine
//! has it: `check`, `run` and `replay` refuse a capacity it cannot hold.

use sgswitch_config::Host;
use sgswitch_conntrack as ct;

use crate::packet::capacity_share;

/// The connection tables would not fit in memory.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "[conntrack] capacity = {capacity} needs {need_gib:.1} GiB for its connection tables, more than this machine's {field} ({have_gib:.1} GiB): lower it"
)]
pub struct MemoryError {
    pub capacity: u32,
    pub need_gib: f64,
    pub have_gib: f64,
    pub field: &'static str,
}

/// Bytes the connection tables of `loops` loops sharing `capacity` flows
/// allocate.
pub fn conntrack_bytes(capacity: u32, loops: usize) -> u64 {
    (0..loops.max(1)).map(|i| ct::Table::bytes_for(capacity_share(capacity, loops, i))).sum()
}

/// A field of `/proc/meminfo` in bytes (`MemTotal`, `MemAvailable`).
pub fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Whether the connection tables of `host` over `loops` loops fit in
/// `memory` bytes (the machine's `field` of `/proc/meminfo`); returns the
/// bytes they need.
///
/// # Errors
/// The tables would need more than `memory`; the error says how much.
pub fn check_conntrack_memory(host: &Host, loops: usize, memory: u64, field: &'static str) -> Result<u64, MemoryError> {
    let need = conntrack_bytes(host.conntrack.capacity, loops);
    if need > memory {
        let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
        return Err(MemoryError { capacity: host.conntrack.capacity, need_gib: gib(need), have_gib: gib(memory), field });
    }
    Ok(need)
}
