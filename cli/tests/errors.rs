//! How `cellos` reports a failure: the message, then each cause of its chain on a
//! line of its own, each exactly once. An error that also prints its source in its
//! own message would show that cause twice.

mod common;

use std::path::Path;

use cellos_ledger::store::RedbStore;
use common::cellos;

/// The messages of the error chain `cellos` printed: the `error:` line, then each
/// `caused by:` line.
fn chain(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter_map(|l| {
            l.strip_prefix("error: ")
                .or_else(|| l.trim_start().strip_prefix("caused by: "))
        })
        .collect()
}

/// Fails unless stderr holds an error with at least one cause, and every cause's
/// text appears in stderr exactly once.
fn assert_each_cause_once(stderr: &str) {
    let msgs = chain(stderr);
    assert!(msgs.len() >= 2, "no error with a cause in:\n{stderr}");
    for cause in &msgs[1..] {
        assert_eq!(
            stderr.matches(cause).count(),
            1,
            "the cause {cause:?} is printed more than once:\n{stderr}"
        );
    }
}

#[test]
fn verify_of_a_truncated_store_prints_each_cause_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.redb");
    drop(RedbStore::open(&path).expect("create a store"));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open ledger.redb");
    // Too short for redb's header: the open fails with an I/O error.
    f.set_len(100).expect("truncate ledger.redb");
    drop(f);

    let data = dir.path().to_str().expect("utf-8 path");
    let (ok, _, err) = cellos(
        &["ledger", "verify", "--data", data],
        "http://127.0.0.1:1",
        Path::new("/nonexistent"),
    );
    assert!(!ok, "verify of a truncated store succeeded:\n{err}");
    assert!(
        err.starts_with("error: cannot open "),
        "the error names the file:\n{err}"
    );
    assert_each_cause_once(&err);
}

#[test]
fn an_unreachable_ledger_prints_each_cause_once() {
    let (ok, _, err) = cellos(
        &["node", "list"],
        "http://127.0.0.1:1",
        Path::new("/nonexistent"),
    );
    assert!(!ok, "node list against no ledger succeeded:\n{err}");
    assert!(err.contains("unreachable"), "{err}");
    assert_each_cause_once(&err);
}

#[test]
fn the_check_sees_a_cause_printed_twice() {
    assert_each_cause_once("error: cannot open x\n  caused by: store x\n  caused by: bad\n");
    let twice = "error: cannot open x\n  caused by: store x: bad\n  caused by: bad\n";
    assert!(std::panic::catch_unwind(|| assert_each_cause_once(twice)).is_err());
}
