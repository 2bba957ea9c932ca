//! Any bytes as a pcap or pcapng capture, read and replayed.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sgswitch_fuzz::capture(data);
});
