//! Test support: Debian's registry (`docker-registry`) on a loopback port, layer
//! tars built from bytes (including names a normal tar writer refuses), and
//! pushing images with oci-client.

#![allow(dead_code)] // each test binary uses a different part

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
        h.set_uid(0);
        h.set_gid(0);
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
    let config = image.config();
    let config_digest = Digest::of(&config);
    client
        .push_blob(&r, &config, config_digest.as_str())
        .await
        .expect("push config");
    let mut layers = Vec::new();
    for (blob, l) in &image.layers {
        client
            .push_blob(&r, blob, l.digest.as_str())
            .await
            .expect("push layer");
        layers.push(serde_json::json!({
            "mediaType": media_type(l.compression),
            "digest": l.digest.as_str(),
            "size": l.size,
        }));
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.as_str(),
            "size": config.len(),
        },
        "layers": layers,
    }))
    .expect("manifest json");
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
