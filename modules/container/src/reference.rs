//! Image references (`registry[:port]/repo[:tag][@sha256:<hex>]`) and digests.
//!
//! A reference comes from a tenant's deployment, so it is validated once here and
//! carried as an [`ImageRef`] afterwards. Like docker, a name without a registry
//! (`busybox`, `library/busybox`) means Docker Hub, and one without a tag or digest
//! means `:latest`. Only sha256 digests are accepted: that is the algorithm the
//! cache addresses blobs by.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::ContainerError;

const DEFAULT_REGISTRY: &str = "docker.io";
const MAX_NAME: usize = 255;
const MAX_TAG: usize = 128;

/// A sha256 content digest, `sha256:` and 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    pub fn new(s: &str) -> Result<Self, ContainerError> {
        let bad = |reason: &str| ContainerError::BadDigest {
            digest: s.to_string(),
            reason: reason.to_string(),
        };
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| bad("only sha256 digests are supported"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("expected 64 lowercase hex digits after sha256:"));
        }
        Ok(Digest(s.to_string()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    pub(crate) fn from_hasher(h: Sha256) -> Self {
        Digest(format!("sha256:{}", hex::encode(h.finalize())))
    }

    /// The 64 hex digits: the blob's file name in the cache.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Digest {
    type Err = ContainerError;
    fn from_str(s: &str) -> Result<Self, ContainerError> {
        Digest::new(s)
    }
}

/// A validated image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<Self, ContainerError> {
        let bad = |reason: &str| ContainerError::BadReference {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (
                n,
                Some(
                    Digest::new(d)
                        .map_err(|_| bad("the part after @ must be sha256:<64 hex digits>"))?,
                ),
            ),
            None => (s, None),
        };
        // A tag is after the last ':' that comes after the last '/' (a ':' before
        // it is the registry's port).
        let slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[slash..].rfind(':') {
            Some(i) => (&name_tag[..slash + i], Some(&name_tag[slash + i + 1..])),
            None => (name_tag, None),
        };
        if let Some(t) = tag {
            let first_ok = t
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
            let ok = t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !first_ok || !ok || t.len() > MAX_TAG {
                return Err(bad(
                    "a tag is 1 to 128 of A-Z a-z 0-9 _ . - and starts with a letter, digit or _",
                ));
            }
        }
        if name.len() > MAX_NAME {
            return Err(bad("the name is longer than 255 characters"));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        check_registry(&registry).map_err(|r| bad(&r))?;
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        for component in repository.split('/') {
            check_component(component).map_err(|r| bad(&r))?;
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `host[:port]`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest the reference pins, if it pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same repository at `digest` (an index entry's manifest).
    pub fn with_digest(&self, digest: Digest) -> Self {
        ImageRef {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// The reference as `oci-client` takes it.
    pub(crate) fn to_oci(&self) -> oci_client::Reference {
        match &self.digest {
            Some(d) => oci_client::Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                d.to_string(),
            ),
            None => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                self.tag.clone().unwrap_or_else(|| "latest".into()),
            ),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = ContainerError;
    fn from_str(s: &str) -> Result<Self, ContainerError> {
        ImageRef::parse(s)
    }
}

/// `host[:port]`: DNS labels (or an IPv4 address) and an optional decimal port.
fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port) = match registry.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (registry, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || !host.split('.').all(label_ok) {
        return Err(format!("registry host {host:?} is not a host name"));
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("registry port {p:?} is not a port number"));
        }
    }
    Ok(())
}

/// One path component of a repository: lowercase letters and digits, separated
/// by one `.`, one or two `_`, or any number of `-`.
fn check_component(c: &str) -> Result<(), String> {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let ok = !bytes.is_empty()
        && alnum(bytes[0])
        && alnum(bytes[bytes.len() - 1])
        && bytes.iter().all(|&b| alnum(b) || b"._-".contains(&b))
        && !c.contains("..")
        && !c.contains("___")
        && !c.contains("._")
        && !c.contains("_.")
        && !c.contains(".-")
        && !c.contains("-.")
        && !c.contains("_-")
        && !c.contains("-_");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "repository component {c:?} must be lowercase letters and digits separated by '.', '_', '__' or dashes"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_the_usual_forms() {
        let r = ImageRef::parse("127.0.0.1:5000/team/app:v1.2").expect("parse");
        assert_eq!(
            (r.registry(), r.repository(), r.tag(), r.digest()),
            ("127.0.0.1:5000", "team/app", Some("v1.2"), None)
        );
        let r = ImageRef::parse("busybox").expect("parse");
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        let r = ImageRef::parse("localhost/app").expect("parse");
        assert_eq!(r.to_string(), "localhost/app:latest");
        let r = ImageRef::parse(&format!("reg.example:443/a/b@{D}")).expect("parse");
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().map(Digest::as_str), Some(D));
        assert_eq!(r.to_string(), format!("reg.example:443/a/b@{D}"));
        let r = ImageRef::parse(&format!("reg.example/a:t@{D}")).expect("parse");
        assert_eq!((r.tag(), r.digest().is_some()), (Some("t"), true));
        assert_eq!(
            ImageRef::parse("ghcr.io/o/r__x.y-z")
                .expect("parse")
                .repository(),
            "o/r__x.y-z"
        );
    }

    #[test]
    fn refuses_bad_references_with_a_reason() {
        for (s, why) in [
            ("", "empty"),
            ("Reg.io/App", "lowercase"),
            ("reg.io/app:", "tag"),
            ("reg.io/app:-x", "tag"),
            ("reg.io:99999/app", "port"),
            ("reg.io:/app", "port"),
            ("reg.io/../x", "component"),
            ("reg.io//x", "component"),
            ("reg.io/app@sha256:abc", "after @"),
            ("reg.io/app@md5:0123", "after @"),
            ("-bad.io/app", "host"),
            ("reg.io/a/", "component"),
        ] {
            let e = ImageRef::parse(s).expect_err(s).to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn digests_are_sha256_hex() {
        assert_eq!(Digest::new(D).expect("digest").hex().len(), 64);
        assert!(Digest::new(&D.to_uppercase()).is_err());
        assert!(Digest::new("sha512:00").is_err());
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
