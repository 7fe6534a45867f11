//! Pulling an image from an OCI distribution registry into the [`BlobCache`].
//!
//! The HTTP side (token auth, plain HTTP for registries flagged insecure, the
//! distribution API) is `oci-client`'s, except the manifest GET, which is ours so
//! that its body is capped as it arrives (oci-client reads it whole). Everything a
//! registry sends is treated as untrusted: manifests, the config and every layer are hashed here and compared
//! with the digest that named them, and each has a size cap ([`Limits`]). Layers
//! stream from the socket into the cache's temp file, never whole into memory.
//! Blobs are fetched by digest from the image's own repository only: a layer's
//! `urls` (foreign layers) are ignored, so a manifest cannot point the node at an
//! arbitrary host.
//!
//! A pull with [`PullPolicy::IfNotPresent`] of an image whose blobs are all cached
//! makes no request at all, so a node restarts its containers without the registry.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use oci_spec::image::{Arch, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os};

use crate::cache::{BlobCache, Pin};
use crate::reference::{Digest, ImageRef};
use crate::ContainerError;

const MIB: u64 = 1 << 20;

/// Size caps on what a registry may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A manifest or an index; the response is cut off at this size.
    pub manifest: u64,
    pub config: u64,
    /// One layer, compressed.
    pub layer: u64,
    /// Layers in one image.
    pub layers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            manifest: 4 * MIB,
            config: 4 * MIB,
            layer: 8 << 30,
            layers: 128,
        }
    }
}

/// How to log in to a registry: anonymously (still with a bearer token if the
/// registry asks for one) or with a user name and password (sent to the token
/// service, or as HTTP basic auth to a registry without one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
}

#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Registries (`host:port` as in the reference) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    pub credentials: Credentials,
    pub limits: Limits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Use what the cache knows for this reference (no request at all when every
    /// blob is there); ask the registry otherwise.
    IfNotPresent,
    /// Resolve the reference at the registry again; blobs already cached are not
    /// fetched again.
    Always,
}

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The blob's digest (compressed, as stored).
    pub digest: Digest,
    pub size: u64,
    pub compression: Compression,
    /// The digest of the uncompressed tar, from the image config.
    pub diff_id: Digest,
}

/// What the image config says about running it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` strings.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`, as the image says.
    pub user: Option<String>,
}

/// A pulled image: every blob it names is in the cache and matched its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub reference: ImageRef,
    /// The image manifest's digest (for an index: the linux/amd64 entry's).
    pub manifest: Digest,
    pub config: ImageConfig,
    /// Bottom first.
    pub layers: Vec<Layer>,
}

/// Pulls images into a cache.
pub struct Puller {
    client: Client,
    /// For manifests, which oci-client would read whole before any cap applies.
    http: reqwest::Client,
    insecure: Vec<String>,
    cache: Arc<BlobCache>,
    auth: RegistryAuth,
    limits: Limits,
}

/// A stalled registry fails a pull instead of hanging it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Manifest media types asked for, most wanted first.
const ACCEPT: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

impl Puller {
    pub fn new(cache: Arc<BlobCache>, options: PullOptions) -> Self {
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(options.insecure_registries.clone()),
            // Index entries are chosen here, after the index is checked.
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            ..ClientConfig::default()
        };
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            // Only a TLS backend that fails to initialise makes this fail; the
            // default client has the same configuration.
            .unwrap_or_default();
        let auth = match options.credentials {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => RegistryAuth::Basic(username, password),
        };
        Puller {
            client: Client::new(config),
            http,
            insecure: options.insecure_registries,
            cache,
            auth,
            limits: options.limits,
        }
    }

    /// The cache this puller fills (what [`crate::LayerStore::prepare`] reads).
    pub fn cache(&self) -> &Arc<BlobCache> {
        &self.cache
    }

    /// Pulls `reference` (see [`PullPolicy`]); afterwards evicts what the cache's
    /// limit says must go (never this image's blobs).
    pub async fn pull(
        &self,
        reference: &ImageRef,
        policy: PullPolicy,
    ) -> Result<Image, ContainerError> {
        let mut pin = self.cache.pin();
        let image = match policy {
            PullPolicy::IfNotPresent => match self.cached(reference, &mut pin)? {
                Some(image) => image,
                None => self.fetch(reference, &mut pin).await?,
            },
            PullPolicy::Always => self.fetch(reference, &mut pin).await?,
        };
        self.cache.evict()?;
        Ok(image)
    }

    /// The image from the cache alone, if the reference and every blob are there.
    fn cached(&self, reference: &ImageRef, pin: &mut Pin) -> Result<Option<Image>, ContainerError> {
        let Some(manifest) = self.cache.lookup_ref(reference)? else {
            return Ok(None);
        };
        let Some(blobs) = self.cache.image_blobs(&manifest)? else {
            return Ok(None);
        };
        for d in &blobs {
            pin.add(d);
        }
        if !blobs.iter().all(|d| self.cache.contains(d)) {
            return Ok(None);
        }
        let manifest_bytes = self.cache.read(&manifest, self.limits.manifest)?;
        let parsed = parse_manifest(&manifest, &manifest_bytes)?;
        let config_digest = descriptor_digest(parsed.config(), "config")?;
        let config_bytes = self.cache.read(&config_digest, self.limits.config)?;
        image_from(reference, manifest, &parsed, &config_bytes).map(Some)
    }

    async fn fetch(&self, reference: &ImageRef, pin: &mut Pin) -> Result<Image, ContainerError> {
        let oci_ref = reference.to_oci();
        let mut blobs = Vec::new();
        let (bytes, digest) = self.manifest(reference, &oci_ref, None).await?;
        if let Some(want) = reference.digest() {
            if *want != digest {
                return Err(ContainerError::DigestMismatch {
                    what: "manifest",
                    digest: want.clone(),
                    actual: digest,
                });
            }
        }
        let (manifest_digest, manifest_bytes) = if is_index(&bytes) {
            let index = ImageIndex::from_reader(bytes.as_slice())
                .map_err(|e| bad("image index", &digest, e))?;
            let entry = index
                .manifests()
                .iter()
                .find(|m| {
                    m.platform()
                        .as_ref()
                        .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
                })
                .ok_or_else(|| ContainerError::NoPlatform {
                    reference: reference.to_string(),
                })?;
            let child = descriptor_digest(entry, "index entry")?;
            let child_ref = reference.with_digest(child.clone());
            let (child_bytes, actual) = self
                .manifest(reference, &child_ref.to_oci(), Some(entry.size()))
                .await?;
            if actual != child {
                return Err(ContainerError::DigestMismatch {
                    what: "manifest",
                    digest: child,
                    actual,
                });
            }
            pin.add(&digest);
            self.cache.put(&digest, "image index", &bytes)?;
            blobs.push(digest);
            (actual, child_bytes)
        } else {
            (digest, bytes)
        };
        let manifest = parse_manifest(&manifest_digest, &manifest_bytes)?;
        if manifest.layers().len() > self.limits.layers {
            return Err(bad(
                "manifest",
                &manifest_digest,
                format!(
                    "{} layers, more than the limit of {}",
                    manifest.layers().len(),
                    self.limits.layers
                ),
            ));
        }
        // Every size is checked before the first blob is requested.
        for desc in manifest.layers() {
            if desc.size() > self.limits.layer {
                return Err(ContainerError::TooLarge {
                    what: "layer",
                    digest: desc.digest().to_string(),
                    limit: self.limits.layer,
                });
            }
        }
        let config_digest = descriptor_digest(manifest.config(), "config")?;
        pin.add(&config_digest);
        self.blob(
            &oci_ref,
            &config_digest,
            manifest.config().size(),
            "config",
            self.limits.config,
        )
        .await?;
        let config_bytes = self.cache.read(&config_digest, self.limits.config)?;
        let image = image_from(reference, manifest_digest.clone(), &manifest, &config_bytes)?;
        for layer in &image.layers {
            pin.add(&layer.digest);
            self.blob(
                &oci_ref,
                &layer.digest,
                layer.size,
                "layer",
                self.limits.layer,
            )
            .await?;
        }
        pin.add(&manifest_digest);
        self.cache
            .put(&manifest_digest, "manifest", &manifest_bytes)?;
        blobs.push(manifest_digest.clone());
        blobs.push(config_digest);
        blobs.extend(image.layers.iter().map(|l| l.digest.clone()));
        self.cache.record_image(&manifest_digest, &blobs)?;
        self.cache.record_ref(reference, &manifest_digest)?;
        if reference.digest().is_none() {
            // The image by its own digest is known from now on, too.
            self.cache
                .record_ref(&reference.with_digest(manifest_digest), &image.manifest)?;
        }
        Ok(image)
    }

    /// A manifest or index and the digest of its bytes (computed here).
    async fn manifest(
        &self,
        reference: &ImageRef,
        oci_ref: &oci_client::Reference,
        size: Option<u64>,
    ) -> Result<(Vec<u8>, Digest), ContainerError> {
        if let Some(size) = size.filter(|s| *s > self.limits.manifest) {
            return Err(ContainerError::TooLarge {
                what: "manifest",
                digest: format!("{reference} ({size} bytes)"),
                limit: self.limits.manifest,
            });
        }
        let registry = |source| ContainerError::Registry {
            op: "fetching the manifest of",
            reference: reference.to_string(),
            source,
        };
        // oci-client finds and caches the token (anonymous or with credentials);
        // the GET itself is ours so that the body is cut off at the cap.
        let token = self
            .client
            .auth(oci_ref, &self.auth, RegistryOperation::Pull)
            .await
            .map_err(registry)?;
        let host = oci_ref.resolve_registry();
        let scheme = if self.insecure.iter().any(|r| r == host) {
            "http"
        } else {
            "https"
        };
        let url = format!(
            "{scheme}://{host}/v2/{}/manifests/{}",
            oci_ref.repository(),
            oci_ref.digest().or(oci_ref.tag()).unwrap_or("latest")
        );
        let mut req = self
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, ACCEPT.join(", "));
        req = match (token, &self.auth) {
            (Some(token), _) => req.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => req.basic_auth(user, Some(password)),
            (None, _) => req,
        };
        let http = |source| ContainerError::Http {
            op: "fetching",
            url: url.clone(),
            source,
        };
        let mut resp = req
            .send()
            .await
            .map_err(http)?
            .error_for_status()
            .map_err(http)?;
        let too_large = || ContainerError::TooLarge {
            what: "manifest",
            digest: reference.to_string(),
            limit: self.limits.manifest,
        };
        if resp
            .content_length()
            .is_some_and(|n| n > self.limits.manifest)
        {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(http)? {
            if (bytes.len() + chunk.len()) as u64 > self.limits.manifest {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        let digest = Digest::of(&bytes);
        Ok((bytes, digest))
    }

    /// Streams a blob into the cache unless it is there; at most `min(size, cap)` bytes.
    async fn blob(
        &self,
        oci_ref: &oci_client::Reference,
        digest: &Digest,
        size: u64,
        what: &'static str,
        cap: u64,
    ) -> Result<(), ContainerError> {
        if self.cache.contains(digest) {
            return Ok(());
        }
        if size > cap {
            return Err(ContainerError::TooLarge {
                what,
                digest: digest.to_string(),
                limit: cap,
            });
        }
        let registry = |source| ContainerError::Registry {
            op: "fetching a blob of",
            reference: format!("{oci_ref} ({digest})"),
            source,
        };
        let mut stream = self
            .client
            .pull_blob_stream(oci_ref, digest.as_str())
            .await
            .map_err(registry)?;
        let mut w = self.cache.writer(digest, what, size)?;
        if stream.content_length.is_some_and(|n| n > size) {
            return Err(ContainerError::TooLarge {
                what,
                digest: digest.to_string(),
                limit: size,
            });
        }
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| registry(e.into()))?;
            w.write(&chunk)?;
        }
        w.finish()?;
        Ok(())
    }
}

fn bad(what: &'static str, digest: &Digest, reason: impl ToString) -> ContainerError {
    ContainerError::BadImage {
        what,
        digest: digest.to_string(),
        reason: reason.to_string(),
    }
}

/// Whether a manifest body is an index (by its media type, or its `manifests`).
fn is_index(bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_slice::<Peek>(bytes) {
        Ok(p) => match p.media_type.as_deref() {
            Some(t) => t.ends_with("image.index.v1+json") || t.ends_with("manifest.list.v2+json"),
            None => p.manifests.is_some(),
        },
        Err(_) => false,
    }
}

fn parse_manifest(digest: &Digest, bytes: &[u8]) -> Result<ImageManifest, ContainerError> {
    ImageManifest::from_reader(bytes).map_err(|e| bad("manifest", digest, e))
}

fn descriptor_digest(
    d: &oci_spec::image::Descriptor,
    what: &'static str,
) -> Result<Digest, ContainerError> {
    Digest::new(d.digest().as_ref()).map_err(|e| ContainerError::BadImage {
        what,
        digest: d.digest().to_string(),
        reason: e.to_string(),
    })
}

fn compression(media_type: &MediaType) -> Option<Compression> {
    match media_type {
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Some(Compression::None),
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
            Some(Compression::Gzip)
        }
        MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => {
            Some(Compression::Zstd)
        }
        MediaType::Other(t) => match t.as_str() {
            "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.docker.image.rootfs.diff.tar.gzip" => Some(Compression::Gzip),
            "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
            _ => None,
        },
        _ => None,
    }
}

/// The image a checked manifest and config describe.
fn image_from(
    reference: &ImageRef,
    manifest_digest: Digest,
    manifest: &ImageManifest,
    config_bytes: &[u8],
) -> Result<Image, ContainerError> {
    let config_digest = descriptor_digest(manifest.config(), "config")?;
    let parsed = ImageConfiguration::from_reader(config_bytes)
        .map_err(|e| bad("config", &config_digest, e))?;
    let diff_ids = parsed.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(bad(
            "config",
            &config_digest,
            format!(
                "{} diff ids for {} layers",
                diff_ids.len(),
                manifest.layers().len()
            ),
        ));
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (desc, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let digest = descriptor_digest(desc, "layer")?;
        let compression = compression(desc.media_type()).ok_or_else(|| {
            bad(
                "layer",
                &digest,
                format!("unsupported media type {}", desc.media_type()),
            )
        })?;
        layers.push(Layer {
            size: desc.size(),
            compression,
            diff_id: Digest::new(diff_id).map_err(|e| bad("config", &config_digest, e))?,
            digest,
        });
    }
    let c = parsed.config().clone().unwrap_or_default();
    Ok(Image {
        reference: reference.clone(),
        manifest: manifest_digest,
        config: ImageConfig {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
            user: c.user().clone().filter(|u| !u.is_empty()),
        },
        layers,
    })
}
