//! What the tests of `[datapath] core_idle` read of this machine's CPUs:
//! whether it is a virtual machine, whether a core has the kernel's polling
//! idle state, and a core's PM QoS resume latency.

/// Whether this kernel runs under a hypervisor (x86's `hypervisor` CPU
/// flag): `core_idle = "auto"` then leaves the cores to the kernel.
pub fn in_a_vm() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").expect("cpuinfo").lines().any(|l| l.starts_with("flags") && l.contains(" hypervisor"))
}

/// Whether `core`'s first idle state is the kernel's polling one.
pub fn has_polling_state(core: usize) -> bool {
    std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{core}/cpuidle/state0/name")).is_ok_and(|n| n.trim() == "POLL")
}

/// `core`'s `pm_qos_resume_latency_us` ("n/a": it polls when idle).
pub fn resume_latency(core: usize) -> String {
    std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{core}/power/pm_qos_resume_latency_us"))
        .expect("the core's resume latency")
        .trim()
        .to_owned()
}
