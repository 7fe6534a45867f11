//! Test support: what `cellos_container::testing` has (Debian's registry on a loopback
//! port, layer tars built from bytes, pushing images), and a registry of the tests'
//! own that requires a bearer token.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub use cellos_container::testing::*;
use cellos_container::Digest;

/// Reads a file under `root` (test assertions).
pub fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The token a [`TokenRegistry`] hands out and then requires.
const TOKEN: &str = "t0k3n";
/// `Authorization` for user `tenant`, password `s3cret` (base64 of `tenant:s3cret`).
pub const TENANT_BASIC: &str = "Basic dGVuYW50OnMzY3JldA==";

/// A registry that serves one image at `<addr>/private:v1` only to holders of a
/// bearer token, which its token endpoint gives only for tenant's password (the
/// flow registries with a token service use).
pub struct TokenRegistry {
    pub addr: String,
    pub tokens_issued: Arc<AtomicUsize>,
}

impl TokenRegistry {
    pub fn start(image: &TestImage) -> TokenRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (config, manifest) = image.config_and_manifest();
        let mut files: HashMap<String, Vec<u8>> = HashMap::new();
        files.insert(format!("/v2/private/blobs/{}", Digest::of(&config)), config);
        for (blob, l) in &image.layers {
            files.insert(format!("/v2/private/blobs/{}", l.digest), blob.clone());
        }
        files.insert(
            format!("/v2/private/manifests/{}", Digest::of(&manifest)),
            manifest.clone(),
        );
        files.insert("/v2/private/manifests/v1".into(), manifest);
        let files = Arc::new(files);
        let tokens_issued = Arc::new(AtomicUsize::new(0));
        let issued = tokens_issued.clone();
        let realm = format!("http://{addr}/token");
        std::thread::spawn(move || {
            // Bounded: enough connections for the tests, then it stops.
            for conn in listener.incoming().take(200) {
                let Ok(conn) = conn else { continue };
                let (files, issued, realm) = (files.clone(), issued.clone(), realm.clone());
                std::thread::spawn(move || serve_one(conn, &files, &issued, &realm));
            }
        });
        TokenRegistry {
            addr,
            tokens_issued,
        }
    }
}

fn serve_one(
    mut conn: TcpStream,
    files: &HashMap<String, Vec<u8>>,
    issued: &AtomicUsize,
    realm: &str,
) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut authorization = String::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
            break;
        }
        if let Some(v) = h
            .strip_prefix("Authorization: ")
            .or_else(|| h.strip_prefix("authorization: "))
        {
            authorization = v.trim().to_string();
        }
    }
    let target = line.split(' ').nth(1).unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    let challenge = format!("WWW-Authenticate: Bearer realm=\"{realm}\",service=\"test\"\r\n");
    let (status, extra, body): (&str, String, &[u8]) = if path == "/token" {
        if authorization == TENANT_BASIC {
            issued.fetch_add(1, Ordering::SeqCst);
            ("200 OK", String::new(), b"{\"token\":\"t0k3n\"}")
        } else {
            ("401 Unauthorized", String::new(), b"{}")
        }
    } else if authorization != format!("Bearer {TOKEN}") {
        ("401 Unauthorized", challenge, b"{}")
    } else if path == "/v2/" {
        ("200 OK", String::new(), b"{}")
    } else if let Some(body) = files.get(path) {
        let kind = if path.contains("/manifests/") {
            "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n".to_string()
        } else {
            String::new()
        };
        ("200 OK", kind, body.as_slice())
    } else {
        ("404 Not Found", String::new(), b"{}")
    };
    let head = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
}
