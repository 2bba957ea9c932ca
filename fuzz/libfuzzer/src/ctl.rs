//! Any bytes as a control-socket request, parsed (and a trace probed).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sgswitch_fuzz::ctl(data);
});
