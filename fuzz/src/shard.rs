//! Shard targets: what a client sends a shard server, what a server sends a
//! client, what a disk hands the record scanner, and what backends hand the
//! object store's metadata and segment decoders.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use cellos_shard::record::{self, Item};
use cellos_shard::resp::{parse_reply, Command, CommandParser, Limits, Reply};
use cellos_shard::server::{Config, Server};
use cellos_store::backend::MemBackend;
use cellos_store::config::{BackendSpec, StoreConfig};
use cellos_store::object::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

thread_local! {
    static RUNTIME: Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    static SCRATCH: RefCell<Option<tempfile::NamedTempFile>> = const { RefCell::new(None) };
}

/// Where targets put files: `$CELLOS_FUZZ_SCRATCH` (scripts/fuzz.sh points it at
/// /dev/shm and removes it afterwards), else the system temp directory.
fn scratch_dir() -> PathBuf {
    std::env::var_os("CELLOS_FUZZ_SCRATCH").map_or_else(std::env::temp_dir, PathBuf::from)
}

/// Limits small enough that the fuzzer reaches every "too large" branch.
const SMALL: Limits = Limits {
    max_bulk: 64,
    max_args: 4,
    max_line: 32,
    max_frame: 128,
};

/// The server's command parser fed all at once and in pieces must agree (it keeps
/// its place between reads), never hold more than its limits allow, and never
/// loop; the client's reply parser must read what the server's encoder writes.
/// The first byte picks the limits and the piece size.
pub fn resp(data: &[u8]) {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let limits = if mode & 1 == 0 {
        SMALL
    } else {
        Limits::default()
    };
    let piece = usize::from(mode >> 1) % 16 + 1;
    let whole = commands(input, limits, input.len().max(1));
    let pieces = commands(input, limits, piece);
    assert_eq!(
        whole, pieces,
        "fed whole and in {piece}-byte pieces, the parser disagrees"
    );
    replies(input);
}

/// The commands parsed from `input` fed `chunk` bytes at a time, whether it ended
/// in an error, and whether a command was left half read.
fn commands(input: &[u8], limits: Limits, chunk: usize) -> (Vec<Command>, bool, bool) {
    let mut p = CommandParser::new(limits);
    let bound = 2 * limits.max_line + limits.max_frame;
    let mut out = Vec::new();
    for piece in input.chunks(chunk) {
        let mut at = 0;
        while at < piece.len() {
            match p.feed(&piece[at..]) {
                Ok((used, cmd)) => {
                    assert!(used > 0, "feed used no bytes");
                    at += used;
                    assert!(at <= piece.len(), "feed used more bytes than it was given");
                    match cmd {
                        Some(c) => {
                            assert!(
                                !c.is_empty() && c.len() <= limits.max_args,
                                "a command of {} arguments",
                                c.len()
                            );
                            out.push(c);
                        }
                        None => assert_eq!(at, piece.len(), "no command, yet bytes left"),
                    }
                }
                Err(_) => return (out, true, p.in_frame()),
            }
            assert!(
                p.held() <= bound,
                "the parser holds {} bytes, limits allow {bound}",
                p.held()
            );
        }
    }
    (out, false, p.in_frame())
}

/// Replies as our client reads them from a server.
fn replies(buf: &[u8]) {
    let limits = Limits::default();
    let mut at = 0;
    while let Ok(Some((r, used))) = parse_reply(&buf[at..], &limits) {
        assert!(
            used > 0 && at + used <= buf.len(),
            "parse_reply used {used} bytes"
        );
        at += used;
        let mut once = Vec::new();
        r.encode(&mut once);
        let (again, n) = match parse_reply(&once, &limits) {
            Ok(Some(x)) => x,
            other => panic!("{r:?} encodes as {once:?}, which parses as {other:?}"),
        };
        assert_eq!(n, once.len(), "{r:?} encodes to more than one reply");
        let mut twice = Vec::new();
        again.encode(&mut twice);
        assert_eq!(once, twice, "{r:?} does not survive encode and parse");
    }
}

/// Commands the dispatch target leaves out: password attempts, which the server
/// meters at about one a second by design (a fuzzer would spend its time waiting).
fn metered(c: &Command) -> bool {
    let name = c[0].to_ascii_uppercase();
    name == b"AUTH" || (name == b"SELECT" && c.len() > 1)
}

/// A fresh shard server in a temporary directory receives the commands the
/// server's own parser finds in the input (re-encoded as RESP arrays, so the
/// fuzzer's bytes reach dispatch rather than die in framing, which `resp`
/// covers), then the client closes its side. The server must answer each command
/// with a well-formed reply and close the connection.
pub fn dispatch(data: &[u8]) {
    let mut parser = CommandParser::new(Limits::default());
    let mut wire = Vec::new();
    let mut sent = 0usize;
    let mut at = 0;
    while at < data.len() && sent < 64 {
        let Ok((used, cmd)) = parser.feed(&data[at..]) else {
            break;
        };
        at += used;
        match cmd {
            Some(c) if !metered(&c) => {
                Reply::Array(c.into_iter().map(Reply::Bulk).collect()).encode(&mut wire);
                sent += 1;
            }
            _ => {}
        }
    }
    if sent == 0 {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("cellos-fuzz-dispatch")
        .tempdir_in(scratch_dir())
        .expect("a scratch directory");
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
            let mut config = Config::new(dir.path().join("data"), listen);
            config.max_value = 1 << 16;
            config.max_file = 1 << 16;
            let server = Server::start(config)
                .await
                .expect("the shard server starts");
            let mut conn = tokio::net::TcpStream::connect(server.local_addr())
                .await
                .expect("the server accepts a connection");
            // The server may close early (QUIT): later writes may fail.
            let _ = conn.write_all(&wire).await;
            let _ = conn.shutdown().await;
            let mut got = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut got))
                .await
                .expect("the server closes a connection whose client has closed");
            if read.is_ok() {
                check_stream(&got);
            }
            server.shutdown().await;
        });
    });
}

/// Every byte the server wrote is part of a well-formed reply.
fn check_stream(got: &[u8]) {
    let limits = Limits {
        max_bulk: usize::MAX,
        ..Limits::default()
    };
    let mut at = 0;
    while at < got.len() {
        match parse_reply(&got[at..], &limits) {
            Ok(Some((_, used))) => at += used,
            other => panic!(
                "the server wrote a malformed reply at byte {at}: {other:?} in {:?}",
                String::from_utf8_lossy(got)
            ),
        }
    }
}

/// A data file as recovery reads it. Whatever the bytes, the scan succeeds, the
/// records and bad stretches it reports tile the file in order, and every record
/// it reports is exactly the bytes `record::encode` would write for it.
pub fn record(data: &[u8]) {
    SCRATCH.with(|cell| {
        let mut cell = cell.borrow_mut();
        let scratch = match cell.as_mut() {
            Some(s) => s,
            None => {
                cell.insert(tempfile::NamedTempFile::new_in(scratch_dir()).expect("a scratch file"))
            }
        };
        let file = scratch.as_file();
        file.set_len(0).expect("truncate the scratch file");
        file.write_all_at(data, 0).expect("write the scratch file");
        let mut pos = 0u64;
        let end = record::scan(file, scratch.path(), |item: Item<'_>| match item {
            Item::Record {
                offset,
                kind,
                key,
                value,
            } => {
                assert_eq!(
                    offset, pos,
                    "a record does not start where the last item ended"
                );
                let mut bytes = Vec::new();
                record::encode(kind, key, value, &mut bytes);
                let start = usize::try_from(offset).expect("offset fits");
                assert_eq!(
                    data.get(start..start + bytes.len()),
                    Some(&bytes[..]),
                    "the record at {offset} is not what encode writes"
                );
                pos = offset + bytes.len() as u64;
            }
            Item::Bad(bad) => {
                assert_eq!(
                    bad.start, pos,
                    "a bad stretch does not start where the last item ended"
                );
                assert!(bad.end > bad.start, "an empty bad stretch at {}", bad.start);
                pos = bad.end;
            }
        })
        .expect("scanning a readable file succeeds");
        assert_eq!(end.file_len, data.len() as u64);
        match end.tail {
            Some(tail) => {
                assert_eq!(
                    tail.start, pos,
                    "the tail does not start where the last item ended"
                );
                assert_eq!(
                    tail.end, end.file_len,
                    "the tail does not run to the end of the file"
                );
            }
            None => assert_eq!(pos, end.file_len, "the items do not cover the file"),
        }
    });
}

/// The object store the `object` target reads through: 2+1 coding over three
/// backends with a fixed master key (the seeds were written with it).
pub const OBJECT_K: usize = 2;
pub const OBJECT_M: usize = 1;
pub const OBJECT_KEY: [u8; 32] = [9; 32];
/// The name every seed object is stored under.
pub const OBJECT_NAME: &str = "obj";

/// The backends' configuration (their ids are in the metadata the seeds carry).
pub fn object_config(segment_size: usize) -> StoreConfig {
    let specs = (0..OBJECT_K + OBJECT_M)
        .map(|i| BackendSpec {
            address: SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16)),
            namespace: "fuzz".into(),
            password: None,
            node: None,
            farm: None,
        })
        .collect();
    let mut cfg = StoreConfig::new(OBJECT_K, OBJECT_M, OBJECT_KEY, specs);
    cfg.segment_size = segment_size;
    cfg
}

/// Layout of a metadata shard's header (cellos-store's `MetaHeader`): magic, then a
/// 16-byte BLAKE3 prefix of the shard at 41..57. The fuzzer cannot compute a hash,
/// so entries flagged for it get theirs fixed and reach the decoder behind it.
const META_MAGIC: &[u8] = b"CSM1";
const META_HASH: std::ops::Range<usize> = 41..57;

/// One backend entry per record: `[backend | 0x80 to fix the meta hash]
/// [key length u8][key][value length u16 LE][value]`; a short tail is cut.
pub fn object_entries(data: &[u8]) -> Vec<(usize, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = data;
    while let [b, klen, tail @ ..] = rest {
        let (key, tail) = tail.split_at(usize::from(*klen).min(tail.len()));
        let (vlen, tail) = match tail {
            [lo, hi, t @ ..] => (usize::from(u16::from_le_bytes([*lo, *hi])), t),
            _ => (0, &[][..]),
        };
        let (value, tail) = tail.split_at(vlen.min(tail.len()));
        let mut value = value.to_vec();
        if b & 0x80 != 0 && value.len() >= META_HASH.end && value.starts_with(META_MAGIC) {
            let h = blake3::hash(&value[META_HASH.end..]);
            value[META_HASH].copy_from_slice(&h.as_bytes()[..META_HASH.len()]);
        }
        out.push((
            usize::from(b & 0x7f) % (OBJECT_K + OBJECT_M),
            key.to_vec(),
            value,
        ));
        rest = tail;
    }
    out
}

/// What shard servers return for an object: its metadata copies (header,
/// erasure coding, encryption) and its segment shards. `get` and `check` must
/// come back with an answer, never a panic.
pub fn object(data: &[u8]) {
    let backends: Vec<MemBackend> = (0..OBJECT_K + OBJECT_M)
        .map(|_| MemBackend::default())
        .collect();
    for (b, key, value) in object_entries(data) {
        backends[b].entries().insert(key, value);
    }
    let store = Store::new(object_config(64), backends).expect("the fuzz store's config is valid");
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let _ = store.get(OBJECT_NAME).await;
            if let Ok(h) = store.check(OBJECT_NAME).await {
                assert!(h.min_intact <= h.k + h.m, "{h:?}");
            }
        });
    });
}
