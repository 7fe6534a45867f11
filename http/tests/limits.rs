//! `serve` against raw sockets: each bound closes what it should, and only that.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::{get, put};
use cellos_http::{serve, BodyTimeout, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn limits() -> Limits {
    Limits {
        max_connections: 8,
        header_timeout: Duration::from_millis(400),
        body_timeout: Duration::from_millis(400),
        idle_timeout: Duration::from_millis(800),
        read_buffer: 16 * 1024,
        drain_timeout: Duration::from_secs(2),
    }
}

/// Serves a tiny router; returns its address.
async fn start(l: Limits) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/body",
            put(
                |b: Result<Bytes, axum::extract::rejection::BytesRejection>| async move {
                    match b {
                        Ok(b) => format!("got {}", b.len()),
                        Err(e) => {
                            let timed_out = std::iter::successors(
                                Some(&e as &(dyn std::error::Error + 'static)),
                                |e| e.source(),
                            )
                            .any(|e| e.is::<BodyTimeout>());
                            format!("body error, timeout={timed_out}")
                        }
                    }
                },
            ),
        );
    tokio::spawn(serve(listener, app, l, None, std::future::pending()));
    addr
}

/// Reads until EOF or `limit`; returns what was read and when EOF came.
async fn read_to_close(s: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let t = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&out).into(), Some(t.elapsed()))
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into(), None),
        }
    }
}

#[tokio::test]
async fn silent_connection_is_closed_after_the_header_timeout() {
    let addr = start(limits()).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let (_, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    let closed = closed.expect("a silent connection must be closed");
    assert!(
        closed >= Duration::from_millis(300),
        "closed too early: {closed:?}"
    );
}

#[tokio::test]
async fn dribbled_head_is_closed_after_the_header_timeout() {
    let addr = start(limits()).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = b"GET /ok HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let t = Instant::now();
    for b in head.iter().take(head.len() - 2) {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if t.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let (got, closed) = read_to_close(&mut s, Duration::from_secs(1)).await;
    assert!(closed.is_some(), "a dribbled head must be cut off");
    assert!(
        !got.contains("200 OK"),
        "no answer to an incomplete head: {got}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "cut off at {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn dribbled_body_fails_with_body_timeout_and_closes() {
    let addr = start(limits()).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"PUT /body HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n")
        .await
        .expect("head");
    let (mut r, mut w) = s.into_split();
    let dribble = tokio::spawn(async move {
        for _ in 0..1000 {
            if w.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let t = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the connection was not closed within 5 s"),
        }
    }
    dribble.abort();
    let got = String::from_utf8_lossy(&out);
    assert!(got.contains("body error, timeout=true"), "{got}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "closed at {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn keep_alive_connection_is_closed_after_the_idle_timeout() {
    let addr = start(limits()).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("req");
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.expect("answer");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
    // Longer than the header timeout, shorter than the idle timeout: still open.
    tokio::time::sleep(Duration::from_millis(550)).await;
    s.write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("req 2");
    let n = s.read(&mut buf).await.expect("answer 2");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
    let (_, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    let closed = closed.expect("an idle keep-alive connection must be closed");
    assert!(
        closed >= Duration::from_millis(700),
        "closed too early: {closed:?}"
    );
}

#[tokio::test]
async fn connection_over_the_cap_gets_503_and_is_closed() {
    let l = Limits {
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        ..limits()
    };
    let addr = start(l).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // Let the server accept those eight before the ninth arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(addr).await.expect("connect");
    let (got, closed) = read_to_close(&mut extra, Duration::from_secs(2)).await;
    assert!(
        closed.is_some(),
        "the ninth connection must be closed at once"
    );
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    // A freed slot serves again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("req");
    let (got, _) = read_to_close(&mut s, Duration::from_secs(2)).await;
    assert!(got.contains("200 OK"), "{got}");
}
