//! Replays every saved fuzz input through its target: the seed corpora
//! (`fuzz/corpus/<target>/`, grown by scripts/fuzz.sh) and the crashes found so far
//! (`fuzz/regressions/<target>/`). A panic is a regression; each file is named
//! in the failure.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The files directly under `dir`, sorted (none if it does not exist).
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `target` on each file under `corpus/` and `regressions/`; returns how many
/// corpus files there were.
fn replay(target: &cellos_fuzz::Target) -> usize {
    let corpus = inputs(&root().join("corpus").join(target.name));
    let crashes = inputs(&root().join("regressions").join(target.name));
    let mut failed = Vec::new();
    for file in corpus.iter().chain(&crashes) {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        if panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&data))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "target {} panicked on:\n{}",
        target.name,
        failed.join("\n")
    );
    corpus.len()
}

#[test]
fn every_target_has_a_seed_corpus_and_replays_it() {
    for t in cellos_fuzz::TARGETS {
        let n = replay(t);
        assert!(n >= 3, "target {} has {n} corpus files; seed it", t.name);
    }
}

#[test]
fn regressions_are_named_after_targets() {
    let stray = inputs(&root().join("regressions"));
    assert!(
        stray.is_empty(),
        "files outside a target directory: {stray:?}"
    );
    if let Ok(entries) = std::fs::read_dir(root().join("regressions")) {
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                cellos_fuzz::target(&name).is_some(),
                "regressions/{name} is not a target"
            );
        }
    }
}

#[test]
fn a_panicking_target_is_reported() {
    fn boom(_: &[u8]) {
        panic!("boom");
    }
    let t = cellos_fuzz::Target {
        name: "tx",
        run: boom,
        about: "",
    };
    let r = panic::catch_unwind(|| replay(&t));
    assert!(r.is_err(), "a target that panics passed the replay");
}
