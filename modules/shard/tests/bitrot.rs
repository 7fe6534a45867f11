//! Bit rot in the data files (issue 12, item 1): a flipped bit in the middle of an
//! old file or of the file being appended to costs the damaged record and nothing
//! else. On restart no file shrinks, every undamaged key reads back, the damage
//! is reported, and a damaged key answers GET and CHECK with an error instead of
//! an older value.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;

use cellos_shard::client::Client;
use cellos_shard::namespace::{Mode, Namespace, NamespaceOptions, NsError};
use cellos_shard::record::{self, Item};
use cellos_shard::resp::Reply;
use common::Shardd;

const MAXV: usize = 1 << 20;
const MAX_FILE: u64 = 8192;

fn value(i: usize, version: u8) -> Vec<u8> {
    let n = 100 + (i * 37) % 200;
    format!("value {i} v{version} ")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(n)
        .collect()
}

/// The data files of a namespace directory, in order, with their sizes.
fn data_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut files: Vec<(PathBuf, u64)> = std::fs::read_dir(dir)
        .expect("list the namespace directory")
        .map(|e| e.expect("read a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| {
            let len = std::fs::metadata(&p).expect("stat a data file").len();
            (p, len)
        })
        .collect();
    files.sort();
    files
}

/// (offset, end, key) of every record of a data file.
fn layout(path: &Path) -> Vec<(u64, u64, Vec<u8>)> {
    let file = std::fs::File::open(path).expect("open a data file");
    let mut out = Vec::new();
    let end = record::scan(&file, path, |item| {
        if let Item::Record {
            offset, key, value, ..
        } = item
        {
            let end = offset + (record::HEADER + key.len() + value.len()) as u64;
            out.push((offset, end, key.to_vec()));
        }
    })
    .expect("scan a data file");
    assert_eq!(end.tail, None);
    out
}

fn flip(path: &Path, offset: u64, mask: u8) {
    let mut data = std::fs::read(path).expect("read a data file");
    data[offset as usize] ^= mask;
    std::fs::write(path, data).expect("write a data file");
}

/// Damages the middle record of `path`: a bit of its value, or of its header's
/// magic. Returns the record's key.
fn damage_middle(path: &Path, header: bool) -> Vec<u8> {
    let recs = layout(path);
    let (start, end, key) = recs[recs.len() / 2].clone();
    flip(path, if header { start } else { end - 3 }, 0x10);
    key
}

/// Three bit flips in a user namespace of 300 keys spread over many files: a
/// value in an old file, a header in another old file, and a value in the
/// file being appended to, which is the newest version of a key whose older
/// version sits in the first file.
#[tokio::test]
async fn user_namespace_keeps_every_undamaged_key() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Namespace::create(dir.path(), "b", &NamespaceOptions::default(), MAX_FILE).unwrap();
    let mut want: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for i in 0..300 {
        let k = format!("key{i:03}").into_bytes();
        ns.set(&k, &value(i, 1), MAXV).await.unwrap();
        want.insert(k, value(i, 1));
    }
    // Newer versions of the first keys, in the last file.
    for i in 0..20 {
        let k = format!("key{i:03}").into_bytes();
        ns.set(&k, &value(i, 2), MAXV).await.unwrap();
        want.insert(k, value(i, 2));
    }
    drop(ns);
    let ns_dir = dir.path().join("b");
    let files = data_files(&ns_dir);
    assert!(files.len() >= 6, "{} data files", files.len());
    let active = &files[files.len() - 1].0;
    assert!(
        layout(active).len() >= 3,
        "the active file should hold several records"
    );
    let in_old = damage_middle(&files[1].0, false);
    let header_hit = damage_middle(&files[3].0, true);
    let in_active = damage_middle(active, false);
    assert!(
        in_active < b"key020".to_vec(),
        "the active file's damaged record is a newer version"
    );

    let (ns, cuts) = Namespace::open(dir.path(), "b", MAX_FILE).unwrap();
    assert_eq!(cuts, vec![], "nothing may be cut");
    assert_eq!(data_files(&ns_dir), files, "no data file may shrink");
    let damage = ns.damage();
    assert_eq!(damage.len(), 3, "{damage:?}");
    let keys: Vec<Option<Vec<u8>>> = damage.iter().map(|d| d.key.clone()).collect();
    assert!(keys.contains(&Some(in_old.clone())), "{damage:?}");
    assert!(keys.contains(&Some(in_active.clone())), "{damage:?}");
    assert_eq!(ns.info().damaged, 3);
    for (k, v) in &want {
        let name = String::from_utf8_lossy(k);
        if *k == in_old || *k == in_active {
            assert!(
                matches!(ns.get(k), Err(NsError::Corrupt { .. })),
                "{name}: GET must report the damage, not an older version"
            );
            assert!(
                matches!(ns.check(k), Err(NsError::Corrupt { .. })),
                "{name}"
            );
        } else if *k == header_hit {
            // A header whose bits flipped no longer says whose record it was.
            assert_eq!(ns.get(k).unwrap(), None, "{name}");
        } else {
            assert_eq!(ns.get(k).unwrap().as_ref(), Some(v), "{name}");
            assert!(ns.check(k).unwrap(), "{name}");
        }
    }

    // Writing the damaged key again repairs it; later writes land after the
    // damage in the active file and survive another restart.
    ns.set(&in_active, b"repaired", MAXV).await.unwrap();
    ns.set(b"after", b"ok", MAXV).await.unwrap();
    drop(ns);
    let (ns, cuts) = Namespace::open(dir.path(), "b", MAX_FILE).unwrap();
    assert!(cuts.is_empty());
    assert_eq!(ns.get(&in_active).unwrap().unwrap(), b"repaired");
    assert_eq!(ns.get(b"after").unwrap().unwrap(), b"ok");
    assert!(matches!(ns.get(&in_old), Err(NsError::Corrupt { .. })));
    assert_eq!(ns.damage().len(), 3);
}

/// The same in seq mode, where a key is the record's location.
#[tokio::test]
async fn seq_namespace_keeps_every_undamaged_key() {
    let dir = tempfile::tempdir().unwrap();
    let opts = NamespaceOptions {
        mode: Some(Mode::Seq),
        ..NamespaceOptions::default()
    };
    let ns = Namespace::create(dir.path(), "s", &opts, MAX_FILE).unwrap();
    let mut want = Vec::new();
    for i in 0..300 {
        let k = ns.set(b"", &value(i, 1), MAXV).await.unwrap();
        want.push((k, value(i, 1)));
    }
    drop(ns);
    let ns_dir = dir.path().join("s");
    let files = data_files(&ns_dir);
    let in_old = damage_middle(&files[1].0, false);
    let header_hit = damage_middle(&files[2].0, true);
    let in_active = damage_middle(&files[files.len() - 1].0, false);

    let (ns, cuts) = Namespace::open(dir.path(), "s", MAX_FILE).unwrap();
    assert!(cuts.is_empty());
    assert_eq!(data_files(&ns_dir), files);
    assert_eq!(ns.damage().len(), 3);
    let damaged = [&in_old, &header_hit, &in_active];
    for (k, v) in &want {
        if damaged.contains(&k) {
            assert!(matches!(ns.get(k), Err(NsError::Corrupt { .. })), "{k:?}");
            assert!(matches!(ns.check(k), Err(NsError::Corrupt { .. })), "{k:?}");
        } else {
            assert_eq!(ns.get(k).unwrap().as_ref(), Some(v), "{k:?}");
        }
    }
    // SCAN walks over the damage and lists every undamaged key, in order.
    let (mut cursor, mut seen) = (b"0".to_vec(), Vec::new());
    loop {
        let (next, keys) = ns.scan(&cursor, 7).unwrap();
        seen.extend(keys);
        if next == b"0" {
            break;
        }
        cursor = next;
    }
    let listed: Vec<Vec<u8>> = want
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| *k != header_hit)
        .collect();
    assert_eq!(seen, listed);
}

const T: Duration = Duration::from_secs(10);

fn start(dir: &Path) -> (Shardd, SocketAddr, Vec<String>) {
    let s = Shardd::start(dir, &["--max-file", "8192"]);
    let (addr, said) = (s.addr, s.said.clone());
    (s, addr, said)
}

/// The real server: 300 acknowledged keys, SIGKILL, bit flips in an old and the
/// active file, restart: nothing is cut, every undamaged key reads back over
/// RESP, CHECK and GET report the damaged ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shardd_serves_every_undamaged_key_after_bit_rot() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, _) = start(dir.path());
    let mut c = Client::connect(addr, T).await.unwrap();
    for i in 0..300 {
        c.set(format!("key{i:03}").as_bytes(), &value(i, 1))
            .await
            .unwrap();
    }
    child.kill();
    let ns_dir = dir.path().join("default");
    let files = data_files(&ns_dir);
    assert!(files.len() >= 6);
    let in_old = damage_middle(&files[2].0, false);
    let in_active = damage_middle(&files[files.len() - 1].0, false);

    let (mut child, addr, said) = start(dir.path());
    assert!(
        !said.iter().any(|l| l.contains("recovered")),
        "nothing may be cut: {said:?}"
    );
    assert_eq!(data_files(&ns_dir), files);
    let mut c = Client::connect(addr, T).await.unwrap();
    // The damage is visible to the operator.
    let info = c.ns_info("default").await.unwrap();
    assert!(info.contains("damaged_records: 2\n"), "{info}");
    match c.call(&[b"INFO"]).await.unwrap() {
        Reply::Bulk(b) => {
            let info = String::from_utf8_lossy(&b);
            assert!(info.contains("damaged_records:2\r\n"), "{info}");
        }
        r => panic!("INFO: {r:?}"),
    }
    for i in 0..300 {
        let k = format!("key{i:03}").into_bytes();
        if k == in_old || k == in_active {
            assert!(c.check(&k).await.is_err(), "CHECK {i}");
            assert!(c.get(&k).await.is_err(), "GET {i}");
        } else {
            assert_eq!(c.get(&k).await.unwrap(), Some(value(i, 1)), "GET {i}");
            assert!(c.check(&k).await.unwrap(), "CHECK {i}");
        }
    }
    child.kill();
}
