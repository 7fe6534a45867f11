//! Crash test: the real `shardd` binary is SIGKILLed while many clients write,
//! once it has acknowledged a fixed number of writes in the round (however long
//! that takes). After a restart on the same directory every acknowledged write
//! must read back exactly, so recovery cut only an unacknowledged tail, and the
//! index must match the data: every key it lists verifies and holds the value
//! its writer sent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use cellos_shard::client::Client;
use common::{wait_for_acks, Shardd};

const T: Duration = Duration::from_secs(10);
/// Writes acknowledged in a round before the kill; the writers keep writing.
const ACKS_PER_ROUND: usize = 300;

fn start(dir: &Path) -> (Shardd, SocketAddr) {
    let s = Shardd::start(dir, &["--max-file", "200000"]);
    let addr = s.addr;
    (s, addr)
}

fn value_for(key: &str) -> Vec<u8> {
    let n = 10 + (blake3::hash(key.as_bytes()).as_bytes()[0] as usize) * 40;
    key.as_bytes().iter().copied().cycle().take(n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let acked: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    // The write each writer had in flight when the server died: it may or may not
    // have landed.
    let inflight: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    for round in 0..3 {
        let (mut child, addr) = start(dir.path());
        let acks = Arc::new(AtomicUsize::new(0));
        let mut writers = Vec::new();
        for w in 0..16 {
            let (acked, inflight, acks) = (acked.clone(), inflight.clone(), acks.clone());
            writers.push(tokio::spawn(async move {
                let Ok(mut c) = Client::connect(addr, T).await else {
                    return;
                };
                for i in 0.. {
                    let key = format!("r{round}-w{w}-{i}");
                    let value = value_for(&key);
                    // Every third write overwrites an earlier key of this writer.
                    let key = if i % 3 == 2 {
                        format!("r{round}-w{w}-{}", i / 2)
                    } else {
                        key
                    };
                    let value = if i % 3 == 2 {
                        value_for(&format!("{key}/2"))
                    } else {
                        value
                    };
                    inflight.lock().unwrap().insert(key.clone(), value.clone());
                    match c.set(key.as_bytes(), &value).await {
                        Ok(_) => {
                            inflight.lock().unwrap().remove(&key);
                            acked.lock().unwrap().insert(key, value);
                            acks.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        wait_for_acks(&acks, ACKS_PER_ROUND).await;
        child.kill(); // SIGKILL, with writes in flight
        for w in writers {
            w.await.unwrap();
        }

        let (mut child, addr) = start(dir.path());
        let mut c = Client::connect(addr, T).await.unwrap();
        let acked_now = acked.lock().unwrap().clone();
        let inflight_now = std::mem::take(&mut *inflight.lock().unwrap());
        for (k, v) in &acked_now {
            let got = c.get(k.as_bytes()).await.unwrap();
            // Absent is never right: an in-flight overwrite has a value too.
            let ok = got.as_ref() == Some(v)
                || inflight_now.get(k).is_some_and(|w| got.as_ref() == Some(w));
            assert!(ok, "round {round}: acknowledged key {k} lost or wrong");
            if got.as_ref() != Some(v) {
                // The in-flight overwrite landed: it is now what later rounds expect.
                acked
                    .lock()
                    .unwrap()
                    .insert(k.clone(), got.unwrap_or_default());
            }
        }
        // The index matches the data: every listed key verifies and holds a value
        // its writer sent (acknowledged or not yet), and DBSIZE counts them.
        let (mut cursor, mut listed) = (b"0".to_vec(), 0i64);
        loop {
            let (next, keys) = c.scan(&cursor, 500).await.unwrap();
            for k in keys {
                listed += 1;
                assert!(c.check(&k).await.unwrap());
                let ks = String::from_utf8(k.clone()).unwrap();
                let v = c.get(&k).await.unwrap().unwrap();
                assert!(
                    v == value_for(&ks) || v == value_for(&format!("{ks}/2")),
                    "round {round}: key {ks} holds a value nobody wrote"
                );
            }
            if next == b"0" {
                break;
            }
            cursor = next;
        }
        match c.call(&[b"DBSIZE"]).await.unwrap() {
            cellos_shard::resp::Reply::Int(n) => assert_eq!(n, listed),
            r => panic!("DBSIZE: {r:?}"),
        }
        assert!(listed as usize >= acked_now.len());
        child.kill();
    }
}
