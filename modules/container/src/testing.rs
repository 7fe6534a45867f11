//! A registry on this machine and images built from bytes, for the tests and
//! `cellos bench container` (behind the `testing` feature: a node never needs it).
//!
//! Test images come from files the caller makes, never from the internet: layer tars
//! are written from [`Entry`] lists (names written raw, so a test can build the `..`
//! entries a normal tar writer refuses), pushed with the same OCI client the node
//! pulls with to Debian's registry (`docker-registry`) listening on a loopback port.
//! [`busybox_image`] is the one image both the end-to-end tests and the bench run: a
//! static busybox with the applets they use.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use reqwest::header::HeaderValue;

use crate::{io_err, Compression, ContainerError, Digest, Layer};

/// Where Debian's registry is installed (package `docker-registry`).
const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// How long the registry may take to listen.
const REGISTRY_START: Duration = Duration::from_secs(30);

/// A running registry with its storage in a temporary directory; killed on drop.
pub struct Registry {
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:port`.
    pub addr: String,
    child: Option<Child>,
}

impl Registry {
    /// Starts `docker-registry` on a free loopback port and waits until it listens.
    pub fn start() -> Result<Registry, ContainerError> {
        let dir = tempfile::tempdir().map_err(io_err("create a directory in", "/tmp"))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io_err("find a free port on", "127.0.0.1"))?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).map_err(io_err("write", &config_path))?;
        let mut reg = Registry {
            dir,
            addr,
            child: None,
        };
        let log_path = reg.log_path();
        let log = std::fs::File::create(&log_path).map_err(io_err("create", &log_path))?;
        let log_err = log.try_clone().map_err(io_err("reopen", &log_path))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(io_err("run (Debian package docker-registry)", REGISTRY_BIN))?;
        reg.child = Some(child);
        let deadline = Instant::now() + REGISTRY_START;
        while TcpStream::connect(&reg.addr).is_err() {
            if Instant::now() > deadline {
                return Err(ContainerError::Io {
                    op: "wait for docker-registry to listen; its log",
                    path: log_path,
                    source: std::io::ErrorKind::TimedOut.into(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(reg)
    }

    /// Stops the registry (its storage stays until the value is dropped).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// What the registry has logged so far.
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

    /// An OCI client that speaks plain HTTP to this registry.
    pub fn client(&self) -> Client {
        Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(vec![self.addr.clone()]),
            ..ClientConfig::default()
        })
    }

    /// `repo_tag` (`repo:tag` or `repo@digest`) on this registry.
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
///
/// # Panics
/// On a name or link target of 100 bytes or more (the old header's fields): callers
/// write short names by hand.
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
        assert!(
            name.len() < raw.len(),
            "tar entry name {name:?} is too long"
        );
        raw[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(t) = link {
            let raw = &mut h.as_old_mut().linkname;
            assert!(t.len() < raw.len(), "link target {t:?} is too long");
            raw[..t.len()].copy_from_slice(t.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).expect("writing to a Vec cannot fail");
    }
    b.into_inner().expect("writing to a Vec cannot fail")
}

/// `tar` compressed as asked, and the [`Layer`] that describes it.
pub fn layer(tar: &[u8], compression: Compression) -> (Vec<u8>, Layer) {
    let blob = match compression {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).expect("writing to a Vec cannot fail");
            e.finish().expect("writing to a Vec cannot fail")
        }
        Compression::Zstd => zstd::stream::encode_all(tar, 3).expect("reading a slice cannot fail"),
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
        serde_json::json!({
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
        })
        .to_string()
        .into_bytes()
    }

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
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": Digest::of(&config).as_str(),
                "size": config.len(),
            },
            "layers": layers,
        })
        .to_string()
        .into_bytes();
        (config, manifest)
    }
}

/// A one-layer image of this machine's static busybox (`/bin/busybox`, Debian's
/// `busybox-static`) with `applets` linked in `/bin` and a page in `/www`
/// (`served-from-a-container`); no entrypoint, `cmd` `/bin/sh`, `PATH=/bin`, root.
pub fn busybox_image(applets: &[&str]) -> Result<TestImage, ContainerError> {
    let bin = "/bin/busybox";
    let busybox =
        std::fs::read(bin).map_err(io_err("read (Debian package busybox-static)", bin))?;
    let links: Vec<String> = applets.iter().map(|a| format!("bin/{a}")).collect();
    let mut entries = vec![
        Entry::Dir("bin/", 0o755),
        Entry::Dir("www/", 0o755),
        Entry::File("www/index.html", b"served-from-a-container\n", 0o644),
        Entry::File("bin/busybox", &busybox, 0o755),
    ];
    entries.extend(links.iter().map(|l| Entry::Symlink(l, "busybox")));
    let mut image = TestImage::new(vec![layer(&tar(&entries), Compression::Gzip)]);
    image.entrypoint = vec![];
    image.cmd = vec!["/bin/sh"];
    image.env = vec!["PATH=/bin"];
    image.working_dir = "/";
    image.user = "";
    Ok(image)
}

fn push_err(
    op: &'static str,
    r: &Reference,
) -> impl FnOnce(oci_client::errors::OciDistributionError) -> ContainerError {
    let reference = r.to_string();
    move |source| ContainerError::Registry {
        op,
        reference,
        source,
    }
}

fn parse(reference: String) -> Result<Reference, ContainerError> {
    reference
        .parse()
        .map_err(|e: oci_client::ParseError| ContainerError::BadReference {
            reference,
            reason: e.to_string(),
        })
}

/// A client authenticated (anonymously) to push to `r`.
async fn pusher(reg: &Registry, r: &Reference) -> Result<Client, ContainerError> {
    let client = reg.client();
    client
        .auth(r, &RegistryAuth::Anonymous, RegistryOperation::Push)
        .await
        .map_err(push_err("authenticate to", r))?;
    Ok(client)
}

/// Pushes the blobs and manifest of `image` to `repo`, tagged `tag` when given;
/// returns the manifest's digest and size.
pub async fn push_image(
    reg: &Registry,
    repo: &str,
    tag: Option<&str>,
    image: &TestImage,
) -> Result<(Digest, u64), ContainerError> {
    let r = parse(reg.reference(repo))?;
    let client = pusher(reg, &r).await?;
    let (config, manifest) = image.config_and_manifest();
    client
        .push_blob(&r, &config, Digest::of(&config).as_str())
        .await
        .map_err(push_err("push the config to", &r))?;
    for (blob, l) in &image.layers {
        client
            .push_blob(&r, blob, l.digest.as_str())
            .await
            .map_err(push_err("push a layer to", &r))?;
    }
    let digest = Digest::of(&manifest);
    let size = manifest.len() as u64;
    push_manifest(
        reg,
        repo,
        tag.unwrap_or(digest.as_str()),
        manifest,
        "application/vnd.oci.image.manifest.v1+json",
    )
    .await?;
    Ok((digest, size))
}

/// Pushes an index of `(digest, size, arch)` manifests as `repo:tag`; its digest.
pub async fn push_index(
    reg: &Registry,
    repo: &str,
    tag: &str,
    manifests: &[(Digest, u64, &str)],
) -> Result<Digest, ContainerError> {
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
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    })
    .to_string()
    .into_bytes();
    let digest = Digest::of(&index);
    push_manifest(
        reg,
        repo,
        tag,
        index,
        "application/vnd.oci.image.index.v1+json",
    )
    .await?;
    Ok(digest)
}

async fn push_manifest(
    reg: &Registry,
    repo: &str,
    tag: &str,
    body: Vec<u8>,
    media_type: &'static str,
) -> Result<(), ContainerError> {
    let r = parse(if tag.starts_with("sha256:") {
        reg.reference(&format!("{repo}@{tag}"))
    } else {
        reg.reference(&format!("{repo}:{tag}"))
    })?;
    let client = pusher(reg, &r).await?;
    client
        .push_manifest_raw(&r, body, HeaderValue::from_static(media_type))
        .await
        .map_err(push_err("push a manifest to", &r))?;
    Ok(())
}
