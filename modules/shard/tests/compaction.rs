//! Compaction under SIGKILL (issue 12, item 2; issue 13): the real `shardd`
//! compacts in the background while 8 clients overwrite and delete, and is
//! killed at each step of a pass in turn. A test build's `shardd` stops the pass
//! at the step named by `CELLOS_SHARDD_FAILPOINT` and says so (the `failpoints`
//! feature), so every kill lands where the test means it to, whatever the
//! machine's speed. After every restart no compaction output is left, each
//! acknowledged write (and delete) holds, and SCAN lists each live key once;
//! once a pass has run to its end, the data files hold little more than the
//! live data.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use cellos_shard::client::Client;
use cellos_shard::resp::Reply;
use common::{wait_for_acks, Shardd};

const T: Duration = Duration::from_secs(10);
const MAX_FILE: u64 = 64 << 10;
/// Operations acknowledged while the pass stands at its step, before the kill:
/// five per writer, so writes land beside a half-done pass, and most keys the
/// pass saw deleted are still deleted at the kill (a writer re-sets a key 30
/// operations after deleting it), which a pass that drops their tombstones too
/// early would resurrect.
const ACKS_WHILE_STOPPED: usize = 40;
/// The steps of a pass a kill is aimed at, and whether the pass's output file
/// (`data-N.compact`) exists then. For a SIGKILL (not a power cut), written and
/// synced leave the same disk, as do renamed and dir synced; each is killed at
/// anyway, since a later change of the pass may tell them apart.
const STEPS: [(&str, bool); 6] = [
    ("created", true),
    ("written", true),
    ("synced", true),
    ("renamed", false),
    ("dir synced", false),
    ("file done", false),
];

/// Starts shardd with the pass stopping at `step` of compaction, and checks the
/// build has the hook (without it the test would wait in vain).
fn start(dir: &Path, step: &str) -> (Shardd, SocketAddr) {
    let fp = format!("compaction:{step}");
    let s = Shardd::start_with_env(
        dir,
        &["--max-file", &MAX_FILE.to_string()],
        &[("CELLOS_SHARDD_FAILPOINT", &fp)],
    );
    let armed = format!("shardd: failpoint {fp} armed (a test hook)");
    assert!(
        s.said.contains(&armed),
        "{} has no failpoints (another build replaced it? run it through `cargo test -p cellos-shard`); it said {:?}",
        env!("CARGO_BIN_EXE_shardd"),
        s.said
    );
    let addr = s.addr;
    (s, addr)
}

/// Bytes of data files, and whether a compaction output exists.
fn disk(ns_dir: &Path) -> (u64, bool) {
    let (mut bytes, mut compacting) = (0, false);
    for e in std::fs::read_dir(ns_dir)
        .expect("list the namespace")
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".compact") {
            compacting = true;
        } else if name.ends_with(".log") {
            bytes += e.metadata().expect("stat a data file").len();
        }
    }
    (bytes, compacting)
}

fn value_for(key: &str, n: u64) -> Vec<u8> {
    let len = 200 + (blake3::hash(format!("{key}/{n}").as_bytes()).as_bytes()[0] as usize) * 8;
    format!("{key}/{n};")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(len)
        .collect()
}

/// Acknowledged state: key -> value, None = deleted.
type Acked = Arc<Mutex<HashMap<String, Option<Vec<u8>>>>>;

/// 8 clients overwrite and delete until the server dies; each returns the bytes
/// it had acknowledged.
fn writers(
    addr: SocketAddr,
    round: u64,
    acked: &Acked,
    inflight: &Acked,
    acks: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..8u64)
        .map(|w| {
            let (acked, inflight, acks) = (acked.clone(), inflight.clone(), acks.clone());
            tokio::spawn(async move {
                let Ok(mut c) = Client::connect(addr, T).await else {
                    return 0u64;
                };
                let mut bytes = 0;
                for n in 0u64.. {
                    // 30 keys per writer, overwritten again and again; every
                    // seventh operation deletes one.
                    let key = format!("w{w}-{}", (n * 7 + round) % 30);
                    let op = if n % 7 == 3 {
                        None
                    } else {
                        Some(value_for(&key, n + round * 1_000_000))
                    };
                    inflight
                        .lock()
                        .expect("lock")
                        .insert(key.clone(), op.clone());
                    let res = match &op {
                        Some(v) => c.set(key.as_bytes(), v).await.map(|_| ()),
                        None => c.del(key.as_bytes()).await.map(|_| ()),
                    };
                    if res.is_err() {
                        return bytes;
                    }
                    bytes += op.as_ref().map_or(16, |v| v.len() as u64 + 16);
                    inflight.lock().expect("lock").remove(&key);
                    acked.lock().expect("lock").insert(key, op);
                    acks.fetch_add(1, Ordering::SeqCst);
                }
                bytes
            })
        })
        .collect()
}

/// Every key of `acked` reads back as acknowledged, or as the operation that
/// was in flight on it (which then counts as acknowledged), and SCAN lists each
/// live key exactly once.
async fn check(
    c: &mut Client,
    acked: &Acked,
    inflight: &HashMap<String, Option<Vec<u8>>>,
    what: &str,
) {
    let acked_now = acked.lock().expect("lock").clone();
    for (k, want) in &acked_now {
        let got = c.get(k.as_bytes()).await.expect("GET");
        let ok = got == *want || inflight.get(k).is_some_and(|v| got == *v);
        assert!(
            ok,
            "{what}: acknowledged {} of {k} lost",
            if want.is_some() { "value" } else { "delete" }
        );
        if got != *want {
            // The in-flight operation landed: later rounds expect it.
            acked.lock().expect("lock").insert(k.clone(), got);
        }
    }
    let (mut cursor, mut listed) = (b"0".to_vec(), Vec::new());
    loop {
        let (next, keys) = c.scan(&cursor, 50).await.expect("SCAN");
        listed.extend(
            keys.into_iter()
                .map(|k| String::from_utf8(k).expect("a key the test wrote")),
        );
        if next == b"0" {
            break;
        }
        cursor = next;
    }
    let unique: HashSet<String> = listed.iter().cloned().collect();
    assert_eq!(unique.len(), listed.len(), "{what}: SCAN lists a key twice");
    let live: HashSet<String> = acked
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(
        unique, live,
        "{what}: SCAN lists other keys than the live ones"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_each_compaction_step_loses_nothing_and_a_pass_frees_the_dead() {
    let dir = tempfile::tempdir().unwrap();
    let ns_dir = dir.path().join("default");
    let acked: Acked = Arc::default();
    // What each writer had in flight when the server died: it may or may not
    // have landed.
    let inflight: Acked = Arc::default();
    let mut written = 0u64;
    for (round, (step, output_exists)) in STEPS.into_iter().enumerate() {
        let what = format!("killed at {step}");
        let (s, addr) = start(dir.path(), step);
        let acks = Arc::new(AtomicUsize::new(0));
        let tasks = writers(addr, round as u64, &acked, &inflight, &acks);
        // The writers make the dead bytes that start a background pass; it
        // stops at the step. Writers go on meanwhile.
        s.wait_for_line(&format!("shardd: failpoint compaction:{step} reached"))
            .await;
        wait_for_acks(&acks, acks.load(Ordering::SeqCst) + ACKS_WHILE_STOPPED).await;
        assert_eq!(disk(&ns_dir).1, output_exists, "{what}: compaction output");
        drop(s); // SIGKILL
        for t in tasks {
            written += t.await.unwrap();
        }

        // Look with every pass stopped before it touches a file, so what the
        // disk holds is what recovery made of it.
        let (s, addr) = start(dir.path(), "start");
        assert!(
            !disk(&ns_dir).1,
            "{what}: compaction output left after the restart"
        );
        let mut c = Client::connect(addr, T).await.unwrap();
        let inflight_now = std::mem::take(&mut *inflight.lock().unwrap());
        check(&mut c, &acked, &inflight_now, &what).await;
        drop(s);
    }

    // A pass that runs to its end leaves little more than the live data: the
    // operator's NSCOMPACT replies once it has (after any background pass).
    let live: u64 = acked
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| v.as_ref().map_or(0, |v| (16 + k.len() + v.len()) as u64))
        .sum();
    let (before, _) = disk(&ns_dir);
    let s = Shardd::start(dir.path(), &["--max-file", &MAX_FILE.to_string()]);
    let mut c = Client::connect(s.addr, T).await.unwrap();
    match c.call(&[b"NSCOMPACT", b"default"]).await.unwrap() {
        Reply::Bulk(b) => {
            let r = String::from_utf8_lossy(&b);
            assert!(r.contains("files_rewritten: "), "{r}");
        }
        r => panic!("NSCOMPACT: {r:?}"),
    }
    let (after, compacting) = disk(&ns_dir);
    eprintln!("data files: {before} bytes before the last start, {after} after the pass; {live} live, {written} written");
    assert!(!compacting, "compaction output left after the pass");
    // Closed files hold only live records; the open one is at most one file.
    let bound = live + 2 * MAX_FILE;
    assert!(
        after <= bound,
        "disk use must fall to the live data: {after} bytes on disk, {live} live, {written} written"
    );
    check(&mut c, &acked, &HashMap::new(), "after a full pass").await;
}
