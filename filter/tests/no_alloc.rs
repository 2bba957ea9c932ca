//! Lookups allocate nothing: thousands of classifications of the example
//! host's ports, counted by a global allocator.

use std::path::Path;
use std::sync::Arc;

use sgswitch_filter::{By, Compiled, Decision, Direction, Key, Policy, Verdict};

#[path = "../../tests/support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::allocs;

#[test]
fn classifying_allocates_nothing() {
    let cfg = sgswitch_config::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")).expect("examples load");
    let compiled = Compiled::new(Arc::new(Policy::new(cfg)), 1);
    let keys: Vec<Key> = (0..4096u32)
        .map(|i| Key {
            v6: i % 5 == 0,
            proto: [6, 17, 1, 58, 47][i as usize % 5],
            remote: u128::from(i.wrapping_mul(0x9e37_79b9)) << (i % 3 * 40),
            local: u128::from(0x0a00_000b + i % 40),
            dst_port: u16::try_from(i % 1024).unwrap(),
            src_port: u16::try_from(i % 65_000).unwrap(),
            icmp_type: u8::try_from(i % 256).unwrap(),
            icmp_code: 0,
        })
        .collect();
    let mut out = vec![Decision { verdict: Verdict::Deny, by: By::Default }; 64];
    let mut allowed = 0;
    let before = allocs();
    for port in 0..compiled.policy().ports().len() {
        let tables = compiled.port(port).expect("tables");
        for d in [Direction::Ingress, Direction::Egress] {
            for k in &keys {
                allowed += usize::from(tables.get(d).classify(k).verdict == Verdict::Allow);
            }
            for chunk in keys.chunks(64) {
                tables.get(d).classify_batch(chunk, &mut out);
            }
        }
    }
    assert_eq!(allocs() - before, 0, "allocations while classifying");
    assert!(allowed > 0);
}
