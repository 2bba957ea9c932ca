//! Every file of the fuzz corpora (`fuzz/corpus/<target>/`: the seeds, and
//! every crash a fuzzer found, kept as a regression input) through its
//! target's core, as an ordinary test: no panic, and the pipeline
//! allocates nothing while deciding.

use std::path::Path;

#[path = "../../tests/support/counting_alloc.rs"]
mod counting_alloc;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .map(|p| (p.file_name().expect("name").to_string_lossy().into_owned(), std::fs::read(&p).expect("read")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{target}: no corpus");
    files
}

#[test]
fn the_pipeline_corpus_runs_without_panic_or_allocation() {
    let mut pipe = sgswitch_fuzz::new_pipeline();
    // First touches of lazily made statics.
    sgswitch_fuzz::pipeline(&mut pipe, &[0, 0]);
    let mut frames = 0;
    for (name, data) in corpus("pipeline") {
        let before = counting_alloc::allocs();
        let ran = sgswitch_fuzz::pipeline(&mut pipe, &data);
        let allocated = counting_alloc::allocs() - before;
        if sgswitch_fuzz::reloads(&data) == 0 {
            assert_eq!(allocated, 0, "{name}: deciding frames allocated");
        }
        frames += ran.frames;
    }
    assert!(frames > 20, "the seeds hold frames: {frames}");
}

#[test]
fn the_config_corpus_loads_or_names_its_errors() {
    let scratch = tempfile::tempdir().expect("tempdir");
    for (_, data) in corpus("config") {
        sgswitch_fuzz::config(&data, scratch.path());
    }
}

#[test]
fn the_capture_corpus_reads_without_panic() {
    let replayed: usize = corpus("capture").iter().map(|(_, d)| sgswitch_fuzz::capture(d)).sum();
    assert!(replayed > 0, "the seeds hold records");
}

#[test]
fn the_ctl_corpus_parses_without_panic() {
    for (_, data) in corpus("ctl") {
        sgswitch_fuzz::ctl(&data);
    }
}
