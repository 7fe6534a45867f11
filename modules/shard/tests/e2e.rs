//! End to end on the host: six real `shardd` processes, 100 MiB put at 4+2
//! through the same `Store` the `cellos store` command uses, two servers killed,
//! the bytes still come back; two fresh servers join, repair moves the lost
//! shards onto them, and the object then survives losing two *other* servers.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

mod common;

use cellos_store::config::{BackendSpec, StoreConfig};
use cellos_store::object::Store;
use common::Shardd;

fn start(dir: &Path) -> Shardd {
    Shardd::start(dir, &[])
}

fn spec(addr: SocketAddr) -> BackendSpec {
    BackendSpec {
        address: addr,
        namespace: "default".into(),
        password: None,
        node: None,
        farm: None,
    }
}

/// 100 MiB: runs of random bytes between runs of repeated text, so zstd has
/// something to do and something it cannot do.
fn payload() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(100 << 20);
    while v.len() < 100 << 20 {
        for _ in 0..(256 << 10) / 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        let text = format!("segment at {} of a compressible run; ", v.len());
        while v.len() % (512 << 10) != 0 {
            let room = (512 << 10) - v.len() % (512 << 10);
            v.extend_from_slice(&text.as_bytes()[..text.len().min(room)]);
        }
    }
    v.truncate(100 << 20);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_servers_lose_two_get_and_repair() {
    let tmp = tempfile::tempdir().unwrap();
    let mut servers: Vec<Option<Shardd>> = (0..6)
        .map(|i| Some(start(&tmp.path().join(format!("s{i}")))))
        .collect();
    let addrs: Vec<SocketAddr> = servers.iter().flatten().map(|s| s.addr).collect();
    let key: [u8; 32] = rand::random();
    let cfg = StoreConfig::new(4, 2, key, addrs.iter().copied().map(spec).collect());
    let store = Store::connect(cfg.clone()).unwrap();
    let data = payload();

    let t = Instant::now();
    let rep = store.put("big", &data).await.unwrap();
    println!(
        "put 100 MiB at 4+2: {:.2} s, {} segments, {} bytes stored",
        t.elapsed().as_secs_f64(),
        rep.segments,
        rep.stored_bytes
    );
    let t = Instant::now();
    assert!(store.get("big").await.unwrap() == data, "get after put");
    println!("get: {:.2} s", t.elapsed().as_secs_f64());

    // Kill two servers.
    let dead = [1usize, 4];
    for &i in &dead {
        servers[i] = None;
    }
    let t = Instant::now();
    assert!(
        store.get("big").await.unwrap() == data,
        "get with two servers down"
    );
    println!("get with 2 of 6 down: {:.2} s", t.elapsed().as_secs_f64());
    let h = store.check("big").await.unwrap();
    assert!(h.readable() && !h.healthy());
    assert_eq!(h.min_intact, 4);

    // Two fresh servers join; repair moves the lost shards onto them.
    for i in 0..2 {
        servers.push(Some(start(&tmp.path().join(format!("new{i}")))));
    }
    let mut all = addrs.clone();
    all.extend(servers[6..].iter().flatten().map(|s| s.addr));
    let mut cfg2 = cfg.clone();
    cfg2.backends = all.iter().copied().map(spec).collect();
    let store2 = Store::connect(cfg2).unwrap();
    let t = Instant::now();
    let r = store2.repair("big").await.unwrap();
    println!(
        "repair: {:.2} s, {} shards rebuilt, moved {:?}",
        t.elapsed().as_secs_f64(),
        r.rebuilt,
        r.moved
    );
    assert_eq!(r.moved.len(), 2);
    assert!(r.unplaced.is_empty());
    assert!(store2.check("big").await.unwrap().healthy());

    // Redundancy is back: two other original servers may now go.
    for i in [0usize, 5] {
        servers[i] = None;
    }
    assert!(
        store2.get("big").await.unwrap() == data,
        "get after repair and two more losses"
    );
}

/// The largest data file under `dir`, found by walking it.
fn largest_data_file(dir: &Path) -> std::path::PathBuf {
    let mut best: Option<(u64, std::path::PathBuf)> = None;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read the dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("data-") && n.ends_with(".log"))
            {
                let len = e.metadata().expect("metadata").len();
                if best.as_ref().is_none_or(|(l, _)| len > *l) {
                    best = Some((len, p));
                }
            }
        }
    }
    best.expect("a data file").1
}

/// Bit rot under a shard server: the damaged record is kept and reported, `check`
/// sees a corrupt shard, and `repair` (what `cellos store repair` runs) rebuilds it
/// from the other shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_damaged_on_disk_is_reported_and_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..3).map(|i| tmp.path().join(format!("s{i}"))).collect();
    let mut servers: Vec<Shardd> = dirs.iter().map(|d| start(d)).collect();
    let key: [u8; 32] = rand::random();
    let cfg = StoreConfig::new(2, 1, key, servers.iter().map(|s| spec(s.addr)).collect());
    let data: Vec<u8> = payload().into_iter().take(4 << 20).collect();
    Store::connect(cfg.clone())
        .unwrap()
        .put("obj", &data)
        .await
        .unwrap();

    // Flip one bit in the middle of server 0's data, then start it again.
    drop(servers.remove(0));
    let file = largest_data_file(&dirs[0]);
    let len = std::fs::metadata(&file).unwrap().len();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[(len / 2) as usize] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();
    servers.insert(0, start(&dirs[0]));
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        len,
        "recovery cut nothing"
    );
    let mut cfg = cfg;
    cfg.backends = servers.iter().map(|s| spec(s.addr)).collect();
    let store = Store::connect(cfg).unwrap();

    let h = store.check("obj").await.unwrap();
    assert!(h.readable() && !h.healthy(), "the damaged shard is seen");
    assert!(store.get("obj").await.unwrap() == data, "get around it");
    let r = store.repair("obj").await.unwrap();
    assert!(r.rebuilt >= 1, "repair rebuilt the damaged shard");
    assert!(store.check("obj").await.unwrap().healthy());
    assert!(store.get("obj").await.unwrap() == data);
}
