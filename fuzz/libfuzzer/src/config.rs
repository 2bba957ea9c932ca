//! Any bytes as the files of a configuration directory: a configuration,
//! or errors naming files of the directory.
#![no_main]

thread_local! {
    static SCRATCH: tempfile::TempDir = tempfile::tempdir_in(if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" }).expect("a scratch folder");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    SCRATCH.with(|dir| sgswitch_fuzz::config(data, dir.path()));
});
