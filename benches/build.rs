//! With the `rte-acl` feature, compiles the C shim over DPDK's rte_acl
//! (flags from `pkg-config libdpdk`) for the classify benchmark.

fn main() {
    println!("cargo::rerun-if-changed=rte_acl/shim.c");
    #[cfg(feature = "rte-acl")]
    rte_acl();
}

#[cfg(feature = "rte-acl")]
fn rte_acl() {
    let out = std::process::Command::new("pkg-config").args(["--cflags", "libdpdk"]).output().expect("pkg-config (install dpdk-dev)");
    assert!(out.status.success(), "pkg-config libdpdk failed: install the Debian package dpdk-dev");
    let flags = String::from_utf8(out.stdout).expect("utf-8 flags");
    let mut build = cc::Build::new();
    build.file("rte_acl/shim.c").opt_level(3);
    let mut words = flags.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-include" {
            if let Some(h) = words.next() {
                build.flag("-include").flag(h);
            }
        } else {
            build.flag(w);
        }
    }
    build.compile("sgrteacl");
    for lib in ["rte_acl", "rte_eal", "rte_kvargs", "rte_telemetry"] {
        println!("cargo::rustc-link-lib=dylib={lib}");
    }
}
