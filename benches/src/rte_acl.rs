//! DPDK's rte_acl on ClassBench rules and packets, through the C shim in
//! `rte_acl/shim.c` (feature `rte-acl`): build time, memory, and cost per
//! lookup single and in batches of 64 (its vectorised path), with every
//! answer checked against ClassBench's first match.

use std::ffi::{c_char, c_int};
use std::hint::black_box;
use std::time::Instant;

use crate::classbench::{CbPacket, CbRule};

#[repr(C)]
struct SgRule {
    src: u32,
    dst: u32,
    src_len: u8,
    dst_len: u8,
    proto: u8,
    proto_mask: u8,
    sport_lo: u16,
    sport_hi: u16,
    dport_lo: u16,
    dport_hi: u16,
}

#[repr(C)]
struct Ctx {
    _opaque: [u8; 0],
}

unsafe extern "C" {
    fn sg_rte_init() -> c_int;
    fn sg_acl_build(rules: *const SgRule, n: u32, mem_bytes: *mut usize, err: *mut c_char, errlen: usize) -> *mut Ctx;
    fn sg_acl_classify(ctx: *const Ctx, data: *const *const u8, results: *mut u32, num: u32) -> c_int;
    fn sg_acl_free(ctx: *mut Ctx);
}

/// rte_acl's figures for one rule set.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    pub ns_median: u64,
    pub ns_batch: f64,
    pub memory_bytes: usize,
    pub build_ms: f64,
}

/// The 16-byte input rte_acl reads: protocol, then source, destination and
/// ports in network byte order.
fn input(p: &CbPacket) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = p.proto;
    b[4..8].copy_from_slice(&p.src.octets());
    b[8..12].copy_from_slice(&p.dst.octets());
    b[12..14].copy_from_slice(&p.sport.to_be_bytes());
    b[14..16].copy_from_slice(&p.dport.to_be_bytes());
    b
}

fn ns(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Builds rte_acl over `rules` and measures it on `packets`.
///
/// # Errors
/// When the EAL cannot start, a build fails, or an answer differs from
/// ClassBench's first match.
pub fn measure(rules: &[CbRule], packets: &[CbPacket], timer_overhead: u64) -> Result<Measured, String> {
    // SAFETY: no arguments; the shim initialises the EAL once.
    let rc = unsafe { sg_rte_init() };
    if rc != 0 {
        return Err(format!("rte_eal_init failed: {rc}"));
    }
    let rs: Vec<SgRule> = rules
        .iter()
        .map(|r| SgRule {
            src: u32::from(r.src.network()),
            dst: u32::from(r.dst.network()),
            src_len: r.src.prefix_len(),
            dst_len: r.dst.prefix_len(),
            proto: r.proto.unwrap_or(0),
            proto_mask: if r.proto.is_some() { 0xff } else { 0 },
            sport_lo: r.sport.0,
            sport_hi: r.sport.1,
            dport_lo: r.dport.0,
            dport_hi: r.dport.1,
        })
        .collect();
    let mut err = [0 as c_char; 256];
    let mut mem = 0usize;
    let t = Instant::now();
    let n = u32::try_from(rs.len()).map_err(|_| "too many rules")?;
    // SAFETY: `rs` holds `n` rules laid out as the shim's `struct sg_rule`;
    // `mem` and `err` are valid for writes of their sizes.
    let ctx = unsafe { sg_acl_build(rs.as_ptr(), n, &raw mut mem, err.as_mut_ptr(), err.len()) };
    let build_ms = ns(t) as f64 / 1e6;
    if ctx.is_null() {
        // SAFETY: the shim wrote a NUL-terminated message into `err`.
        let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) };
        return Err(msg.to_string_lossy().into_owned());
    }
    let inputs: Vec<[u8; 16]> = packets.iter().map(input).collect();
    let ptrs: Vec<*const u8> = inputs.iter().map(|b| b.as_ptr()).collect();
    let mut results = vec![0u32; ptrs.len()];
    let classify = |p: &[*const u8], out: &mut [u32]| {
        let num = u32::try_from(p.len()).expect("a batch fits u32");
        // SAFETY: `ctx` is a built context; `p` holds `num` pointers to
        // 16-byte inputs that outlive the call; `out` has room for `num`.
        unsafe { sg_acl_classify(ctx, p.as_ptr(), out.as_mut_ptr(), num) }
    };
    let t = Instant::now();
    for (p, out) in ptrs.chunks(64).zip(results.chunks_mut(64)) {
        black_box(classify(black_box(p), out));
    }
    let ns_batch = ns(t) as f64 / ptrs.len().max(1) as f64;
    let mut single: Vec<u64> = ptrs
        .iter()
        .map(|p| {
            let mut r = [0u32];
            let t = Instant::now();
            black_box(classify(std::slice::from_ref(black_box(p)), &mut r));
            ns(t).saturating_sub(timer_overhead)
        })
        .collect();
    // SAFETY: `ctx` came from sg_acl_build and is not used after this.
    unsafe { sg_acl_free(ctx) };
    for (i, (p, &got)) in packets.iter().zip(&results).enumerate() {
        let want = rules.iter().position(|r| r.matches(p)).map_or(0, |i| i + 1);
        if usize::try_from(got).ok() != Some(want) {
            return Err(format!("rte_acl answered rule {got} for packet {i}, first match is {want}"));
        }
    }
    single.sort_unstable();
    Ok(Measured { ns_median: single.get(single.len() / 2).copied().unwrap_or(0), ns_batch, memory_bytes: mem, build_ms })
}
