//! Pipelines against the real `shardd`: a client that sends many commands in one
//! write gets one reply per command, in order, each what the command alone would
//! have answered, although the server handles the SETs and GETs of a pipeline in
//! runs (one group commit for the SETs, one trip to a blocking thread for the GETs).
//! What a pipeline's SETs acknowledged survives a SIGKILL.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use cellos_shard::resp::{parse_reply, Limits, Reply};
use common::{wire, Shardd};

/// Sends `cmds` in one write and reads one reply per command.
fn pipeline(addr: SocketAddr, cmds: &[Vec<&[u8]>]) -> Vec<Reply> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let bytes: Vec<u8> = cmds.iter().flat_map(|c| wire(c)).collect();
    s.write_all(&bytes).expect("send");
    let limits = Limits::default();
    let (mut buf, mut replies) = (Vec::new(), Vec::new());
    let mut chunk = vec![0u8; 64 << 10];
    while replies.len() < cmds.len() {
        match parse_reply(&buf, &limits).expect("well-formed reply") {
            Some((r, used)) => {
                buf.drain(..used);
                replies.push(r);
            }
            None => {
                let n = s.read(&mut chunk).expect("read");
                assert!(n > 0, "closed after {} replies", replies.len());
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
    replies
}

fn bulk(v: &[u8]) -> Reply {
    Reply::Bulk(v.to_vec())
}

#[test]
fn a_pipeline_is_answered_in_order_and_its_sets_are_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shardd = Shardd::start(dir.path(), &[]);
    let long_key = vec![b'k'; 4096];
    let mut cmds: Vec<Vec<&[u8]>> = vec![
        vec![b"SET", b"a", b"1"],
        vec![b"SET", b"b", b"2"],
        // Refused alone; the SETs around it in the run are not.
        vec![b"SET", &long_key, b"v"],
        vec![b"set", b"a", b"3"],
        vec![b"GET", b"a"],
        vec![b"GET", b"b"],
        vec![b"GET", &long_key],
        vec![b"GET"],
        vec![b"DEL", b"b"],
        vec![b"GET", b"b"],
        vec![b"get", b"a"],
    ];
    let keys: Vec<Vec<u8>> = (0..300).map(|i| format!("k{i}").into_bytes()).collect();
    cmds.extend(keys.iter().map(|k| vec![&b"SET"[..], k, k]));
    cmds.extend(keys.iter().map(|k| vec![&b"GET"[..], k]));
    let r = pipeline(shardd.addr, &cmds);
    assert_eq!(r[0], Reply::ok());
    assert_eq!(r[1], Reply::ok());
    assert!(
        matches!(&r[2], Reply::Error(e) if e.contains("key of 4096 bytes")),
        "{:?}",
        r[2]
    );
    assert_eq!(r[3], Reply::ok());
    assert_eq!(r[4], bulk(b"3"));
    assert_eq!(r[5], bulk(b"2"));
    assert_eq!(r[6], Reply::Nil);
    assert!(
        matches!(&r[7], Reply::Error(e) if e.contains("wrong number of arguments")),
        "{:?}",
        r[7]
    );
    assert_eq!(r[8], Reply::Int(1));
    assert_eq!(r[9], Reply::Nil);
    assert_eq!(r[10], bulk(b"3"));
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(r[11 + i], Reply::ok(), "SET {}", String::from_utf8_lossy(k));
        assert_eq!(r[11 + keys.len() + i], bulk(k));
    }

    shardd.kill();
    let shardd = Shardd::start(dir.path(), &[]);
    let mut again: Vec<Vec<&[u8]>> = vec![vec![b"GET", b"a"], vec![b"GET", b"b"]];
    again.extend(keys.iter().map(|k| vec![&b"GET"[..], k]));
    let r = pipeline(shardd.addr, &again);
    assert_eq!(r[0], bulk(b"3"));
    assert_eq!(r[1], Reply::Nil);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(r[2 + i], bulk(k));
    }
}
