//! Test support: Debian's registry (`docker-registry`) on a loopback port, layer
//! tars built from bytes (including names a normal tar writer refuses), and
//! pushing images with oci-client.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cellos_container::{Compression, Digest, Layer};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

/// A running registry; killed on drop.
pub struct Registry {
    pub dir: tempfile::TempDir,
    pub addr: String,
    child: Option<Child>,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).expect("config");
        let mut reg = Registry {
            dir,
            addr,
            child: None,
        };
        reg.run();
        reg
    }

    /// Starts the registry process (again) on the same port and storage.
    pub fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log");
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry (Debian package docker-registry)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Blob downloads the registry has answered (GET .../blobs/sha256:...).
    pub fn blob_gets(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:"))
            .count()
    }

    /// Where the registry keeps a blob's bytes.
    pub fn blob_data(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn client(&self) -> Client {
        Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(vec![self.addr.clone()]),
            ..ClientConfig::default()
        })
    }

    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One tar entry to write.
pub enum Entry<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str, u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str),
    Block(&'a str),
    Fifo(&'a str),
    /// A file owned by `uid:gid`.
    Owned(&'a str, u64, u64),
}

/// A tar of `entries`, names written raw (so `..` and absolute names go in as is).
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, data, kind, mode, link): (&str, &[u8], tar::EntryType, u32, Option<&str>) =
            match e {
                Entry::File(n, d, m) => (n, d, tar::EntryType::Regular, *m, None),
                Entry::Dir(n, m) => (n, b"", tar::EntryType::Directory, *m, None),
                Entry::Symlink(n, t) => (n, b"", tar::EntryType::Symlink, 0o777, Some(t)),
                Entry::Hardlink(n, t) => (n, b"", tar::EntryType::Link, 0o644, Some(t)),
                Entry::Char(n) => (n, b"", tar::EntryType::Char, 0o666, None),
                Entry::Block(n) => (n, b"", tar::EntryType::Block, 0o666, None),
                Entry::Fifo(n) => (n, b"", tar::EntryType::Fifo, 0o644, None),
                Entry::Owned(n, _, _) => (n, b"", tar::EntryType::Regular, 0o644, None),
            };
        let (uid, gid) = match e {
            Entry::Owned(_, u, g) => (*u, *g),
            _ => (0, 0),
        };
        let raw = &mut h.as_old_mut().name;
        assert!(name.len() < raw.len(), "test names stay short");
        raw[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(t) = link {
            let raw = &mut h.as_old_mut().linkname;
            raw[..t.len()].copy_from_slice(t.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).expect("tar entry");
    }
    b.into_inner().expect("tar")
}

/// `tar` compressed as asked, and the [`Layer`] that describes it.
pub fn layer(tar: &[u8], compression: Compression) -> (Vec<u8>, Layer) {
    let blob = match compression {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).expect("gzip");
            e.finish().expect("gzip")
        }
        Compression::Zstd => zstd::stream::encode_all(tar, 3).expect("zstd"),
    };
    let l = Layer {
        digest: Digest::of(&blob),
        size: blob.len() as u64,
        compression,
        diff_id: Digest::of(tar),
    };
    (blob, l)
}

pub fn media_type(c: Compression) -> &'static str {
    match c {
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

/// An image to push: layers (blob + description) and the config's fields.
pub struct TestImage {
    pub layers: Vec<(Vec<u8>, Layer)>,
    pub entrypoint: Vec<&'static str>,
    pub cmd: Vec<&'static str>,
    pub env: Vec<&'static str>,
    pub working_dir: &'static str,
    pub user: &'static str,
    pub arch: &'static str,
    /// Overrides the diff ids the config names (a lying config).
    pub diff_ids: Option<Vec<String>>,
}

impl TestImage {
    pub fn new(layers: Vec<(Vec<u8>, Layer)>) -> Self {
        TestImage {
            layers,
            entrypoint: vec!["/bin/tool"],
            cmd: vec!["--serve"],
            env: vec!["PATH=/bin", "MODE=test"],
            working_dir: "/srv",
            user: "1000:1000",
            arch: "amd64",
            diff_ids: None,
        }
    }

    fn config(&self) -> Vec<u8> {
        let diff_ids = self.diff_ids.clone().unwrap_or_else(|| {
            self.layers
                .iter()
                .map(|(_, l)| l.diff_id.to_string())
                .collect()
        });
        serde_json::to_vec(&serde_json::json!({
            "architecture": self.arch,
            "os": "linux",
            "config": {
                "Entrypoint": self.entrypoint,
                "Cmd": self.cmd,
                "Env": self.env,
                "WorkingDir": self.working_dir,
                "User": self.user,
            },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        }))
        .expect("config json")
    }
}

async fn auth(client: &Client, r: &Reference) {
    client
        .auth(r, &RegistryAuth::Anonymous, RegistryOperation::Push)
        .await
        .expect("auth");
}

impl TestImage {
    /// The config and the manifest naming it and the layers.
    pub fn config_and_manifest(&self) -> (Vec<u8>, Vec<u8>) {
        let config = self.config();
        let layers: Vec<_> = self
            .layers
            .iter()
            .map(|(_, l)| {
                serde_json::json!({
                    "mediaType": media_type(l.compression),
                    "digest": l.digest.as_str(),
                    "size": l.size,
                })
            })
            .collect();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": Digest::of(&config).as_str(),
                "size": config.len(),
            },
            "layers": layers,
        }))
        .expect("manifest json");
        (config, manifest)
    }
}

/// Pushes the blobs and manifest of `image` to `repo`, tagged `tag` when given;
/// returns the manifest's digest and size.
pub async fn push_image(
    reg: &Registry,
    repo: &str,
    tag: Option<&str>,
    image: &TestImage,
) -> (Digest, u64) {
    let client = reg.client();
    let r: Reference = reg.reference(repo).parse().expect("reference");
    auth(&client, &r).await;
    let (config, manifest) = image.config_and_manifest();
    client
        .push_blob(&r, &config, Digest::of(&config).as_str())
        .await
        .expect("push config");
    for (blob, l) in &image.layers {
        client
            .push_blob(&r, blob, l.digest.as_str())
            .await
            .expect("push layer");
    }
    let digest = Digest::of(&manifest);
    push_manifest(
        reg,
        repo,
        tag.unwrap_or(digest.as_str()),
        manifest.clone(),
        "application/vnd.oci.image.manifest.v1+json",
    )
    .await;
    (digest, manifest.len() as u64)
}

/// Pushes an index of `(digest, size, arch)` manifests as `repo:tag`; its digest.
pub async fn push_index(
    reg: &Registry,
    repo: &str,
    tag: &str,
    manifests: &[(Digest, u64, &str)],
) -> Digest {
    let entries: Vec<_> = manifests
        .iter()
        .map(|(d, size, arch)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": d.as_str(),
                "size": size,
                "platform": { "architecture": arch, "os": "linux" },
            })
        })
        .collect();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .expect("index json");
    let digest = Digest::of(&index);
    push_manifest(
        reg,
        repo,
        tag,
        index,
        "application/vnd.oci.image.index.v1+json",
    )
    .await;
    digest
}

async fn push_manifest(reg: &Registry, repo: &str, tag: &str, body: Vec<u8>, media_type: &str) {
    let client = reg.client();
    let r: Reference = if tag.starts_with("sha256:") {
        reg.reference(&format!("{repo}@{tag}"))
    } else {
        reg.reference(&format!("{repo}:{tag}"))
    }
    .parse()
    .expect("reference");
    auth(&client, &r).await;
    client
        .push_manifest_raw(&r, body, media_type.parse().expect("content type"))
        .await
        .expect("push manifest");
}

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
