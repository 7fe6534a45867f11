//! Boot files (kernel, initrd, disk image) fetched over HTTP(S) and pinned by the
//! SHA-256 the owner signed.
//!
//! The server may be anyone's: nothing is used before its hash is checked, the
//! download streams to a temporary file (never whole in memory) and stops at the
//! size the workload allows, and only a file whose hash matched is renamed to its
//! final name, which is the hash itself. So a file under its final name is one that
//! was checked, and a node that reboots uses it again without fetching or hashing
//! it again.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt as _;
use sha2::{Digest as _, Sha256};

use crate::{io, VmError};

/// Fetches into one directory.
pub struct Fetcher {
    client: reqwest::Client,
    dir: PathBuf,
}

impl Fetcher {
    pub fn new(dir: &Path) -> Result<Fetcher, VmError> {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|source| VmError::Http {
                url: String::new(),
                source,
            })?;
        Ok(Fetcher {
            client,
            dir: dir.to_path_buf(),
        })
    }

    /// Where the file with hash `sha256` is kept once fetched.
    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// The file at `url`, which must hash to `sha256` (lowercase hex) and be at
    /// most `max` bytes; fetched only if it is not here yet.
    pub async fn fetch(&self, url: &str, sha256: &str, max: u64) -> Result<PathBuf, VmError> {
        let path = self.path(sha256);
        if path.is_file() {
            return Ok(path);
        }
        let fail = |reason: String| VmError::Fetch {
            url: url.to_string(),
            reason,
        };
        let http = |source| VmError::Http {
            url: url.to_string(),
            source,
        };
        let response = self.client.get(url).send().await.map_err(http)?;
        if !response.status().is_success() {
            return Err(fail(format!("the server answered {}", response.status())));
        }
        if let Some(len) = response.content_length().filter(|&l| l > max) {
            return Err(fail(format!(
                "it is {len} bytes; at most {max} are allowed"
            )));
        }
        let tmp = self.dir.join(format!("{sha256}.part"));
        let mut file = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        let mut body = response.bytes_stream();
        let result = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(http)?;
                len += chunk.len() as u64;
                if len > max {
                    return Err(fail(format!("it is more than {max} bytes")));
                }
                hasher.update(&chunk);
                file.write_all(&chunk).map_err(io("writing", &tmp))?;
            }
            let got = hex::encode(hasher.finalize());
            if got != sha256 {
                return Err(fail(format!(
                    "its SHA-256 is {got}, but the workload says {sha256}"
                )));
            }
            file.sync_all().map_err(io("writing", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(io("renaming", &tmp))
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead as _, BufReader, Read as _};
    use std::net::TcpListener;

    /// A one-file HTTP server on loopback that answers every GET with `body` and
    /// counts the requests.
    fn serve(body: Vec<u8>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/file", listener.local_addr().expect("addr"));
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut r = BufReader::new(s.try_clone().expect("clone"));
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let mut s = s;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(&body);
            }
        });
        (url, hits)
    }

    #[tokio::test]
    async fn only_a_file_with_the_signed_hash_is_kept() {
        let body = b"a kernel, or so it says".to_vec();
        let good = hex::encode(Sha256::digest(&body));
        let (url, hits) = serve(body.clone());
        let dir = tempfile::tempdir().expect("dir");
        let f = Fetcher::new(dir.path()).expect("fetcher");

        let wrong = "0".repeat(64);
        let err = f.fetch(&url, &wrong, 1 << 20).await.expect_err("bad hash");
        assert!(
            err.to_string().contains(&format!("its SHA-256 is {good}")),
            "{err}"
        );
        assert!(!f.path(&wrong).exists());
        let err = f.fetch(&url, &good, 8).await.expect_err("too big");
        assert!(err.to_string().contains("at most 8 are allowed"), "{err}");
        let leftovers = std::fs::read_dir(dir.path()).expect("ls").count();
        assert_eq!(leftovers, 0, "nothing is left of a refused file");

        let path = f.fetch(&url, &good, 1 << 20).await.expect("fetch");
        let mut kept = Vec::new();
        std::fs::File::open(&path)
            .and_then(|mut x| x.read_to_end(&mut kept))
            .expect("read");
        assert_eq!(kept, body);
        let before = hits.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(f.fetch(&url, &good, 1 << 20).await.expect("again"), path);
        assert_eq!(
            hits.load(std::sync::atomic::Ordering::SeqCst),
            before,
            "a kept file is not fetched again"
        );
    }
}
