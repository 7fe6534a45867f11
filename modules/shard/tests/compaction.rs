//! Compaction under SIGKILL (issue 12, item 2): the real `shardd` compacts in the
//! background while 8 clients overwrite and delete, and is killed at random
//! moments, half of them while a compaction output file exists. After every
//! restart each acknowledged write (and delete) holds; once the server has
//! compacted in peace, the data files take a fraction of what was written.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use cellos_shard::client::Client;
use cellos_shard::resp::Reply;
use common::{wait_for_acks, Shardd};
use rand::Rng;

const T: Duration = Duration::from_secs(10);
const MAX_FILE: u64 = 64 << 10;
/// Operations acknowledged in a round before the kill can come.
const ACKS_PER_ROUND: usize = 200;

fn start(dir: &Path) -> (Shardd, SocketAddr) {
    let s = Shardd::start(dir, &["--max-file", &MAX_FILE.to_string()]);
    let addr = s.addr;
    (s, addr)
}

/// Bytes of data files, and whether a compaction output exists.
fn disk(ns_dir: &Path) -> (u64, bool) {
    let (mut bytes, mut compacting) = (0, false);
    let Ok(rd) = std::fs::read_dir(ns_dir) else {
        return (0, false);
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".compact") {
            compacting = true;
        } else if name.ends_with(".log") {
            bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_compaction_loses_nothing_and_disk_use_falls() {
    let dir = tempfile::tempdir().unwrap();
    let ns_dir = dir.path().join("default");
    let acked: Acked = Arc::default();
    // What each writer had in flight when the server died: it may or may not
    // have landed.
    let inflight: Acked = Arc::default();
    let mut written = 0u64;
    let mut killed_while_compacting = 0;
    let rounds = 10;
    for round in 0..rounds {
        let (mut child, addr) = start(dir.path());
        let acks = Arc::new(AtomicUsize::new(0));
        let mut writers = Vec::new();
        for w in 0..8u64 {
            let (acked, inflight, acks) = (acked.clone(), inflight.clone(), acks.clone());
            writers.push(tokio::spawn(async move {
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
                    inflight.lock().unwrap().insert(key.clone(), op.clone());
                    let res = match &op {
                        Some(v) => c.set(key.as_bytes(), v).await.map(|_| ()),
                        None => c.del(key.as_bytes()).await.map(|_| ()),
                    };
                    if res.is_err() {
                        return bytes;
                    }
                    bytes += op.as_ref().map_or(16, |v| v.len() as u64 + 16);
                    inflight.lock().unwrap().remove(&key);
                    acked.lock().unwrap().insert(key, op);
                    acks.fetch_add(1, Ordering::SeqCst);
                }
                bytes
            }));
        }
        wait_for_acks(&acks, ACKS_PER_ROUND).await;
        let delay = rand::thread_rng().gen_range(300..1500);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if round % 2 == 1 {
            // Wait (up to 3 s) for a compaction to be copying, then kill at a
            // random moment of it.
            let until = Instant::now() + Duration::from_secs(3);
            while !disk(&ns_dir).1 && Instant::now() < until {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            let us = rand::thread_rng().gen_range(0..1500);
            tokio::time::sleep(Duration::from_micros(us)).await;
        }
        killed_while_compacting += usize::from(disk(&ns_dir).1);
        child.kill();
        for w in writers {
            written += w.await.unwrap();
        }

        let (mut child, addr) = start(dir.path());
        let mut c = Client::connect(addr, T).await.unwrap();
        let acked_now = acked.lock().unwrap().clone();
        let inflight_now = std::mem::take(&mut *inflight.lock().unwrap());
        for (k, want) in &acked_now {
            let got = c.get(k.as_bytes()).await.unwrap();
            let ok = got == *want || inflight_now.get(k).is_some_and(|v| got == *v);
            assert!(
                ok,
                "round {round}: acknowledged {} of {k} lost",
                if want.is_some() { "value" } else { "delete" }
            );
            if got != *want {
                // The in-flight operation landed: later rounds expect it.
                acked.lock().unwrap().insert(k.clone(), got);
            }
        }
        child.kill();
    }
    eprintln!(
        "{killed_while_compacting} of {rounds} kills hit a compaction; {written} bytes acknowledged"
    );
    assert!(
        killed_while_compacting >= 2,
        "only {killed_while_compacting} kills hit a compaction"
    );

    // Left alone, the server compacts what the kills interrupted.
    let live: u64 = acked
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| v.as_ref().map_or(0, |v| (16 + k.len() + v.len()) as u64))
        .sum();
    let (before, _) = disk(&ns_dir);
    let (mut child, addr) = start(dir.path());
    let bound = 2 * live + 2 * MAX_FILE;
    let until = Instant::now() + Duration::from_secs(30);
    let mut now = disk(&ns_dir);
    while (now.0 > bound || now.1) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = disk(&ns_dir);
    }
    eprintln!(
        "data files: {before} bytes before the last start, {} after; {live} live, {written} written",
        now.0
    );
    assert!(
        now.0 <= bound && now.0 * 4 < written,
        "disk use must fall: {} bytes on disk, {live} live, {written} written",
        now.0
    );
    let mut c = Client::connect(addr, T).await.unwrap();
    // An operator can also run a pass now: nothing left to free.
    match c.call(&[b"NSCOMPACT", b"default"]).await.unwrap() {
        Reply::Bulk(b) => {
            let r = String::from_utf8_lossy(&b);
            assert!(r.contains("files_rewritten: "), "{r}");
        }
        r => panic!("NSCOMPACT: {r:?}"),
    }
    assert!(disk(&ns_dir).0 <= now.0 + MAX_FILE);
    let acked_now = acked.lock().unwrap().clone();
    for (k, want) in &acked_now {
        assert_eq!(
            c.get(k.as_bytes()).await.unwrap(),
            *want,
            "{k} after compaction"
        );
    }
    child.kill();
}
