//! A namespace's settings (`namespace.json`: mode, quota, password hash, public)
//! and its password check.
//!
//! The password itself is never stored: only a BLAKE3-derived key, compared in
//! constant time against the key derived from a guess, so neither the file nor
//! the time an answer takes tells how close a guess was.

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use std::path::Path;

use super::{Index, Namespace, NsError, Result};
use crate::sys;

/// How keys are chosen in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Keys are the caller's.
    User,
    /// Keys are assigned by the server and encode the value's location.
    Seq,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Mode, String> {
        match s.to_ascii_lowercase().as_str() {
            "user" => Ok(Mode::User),
            "seq" => Ok(Mode::Seq),
            _ => Err(format!("unknown mode {s:?} (user or seq)")),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::User => "user",
            Mode::Seq => "seq",
        })
    }
}

/// What a namespace is created with (and NSSET changes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceOptions {
    pub mode: Option<Mode>,
    /// Quota on live keys + values, in bytes; 0 = unlimited.
    pub max_size: u64,
    /// Clients must SELECT with this password (unless `public`, for reads).
    pub password: Option<String>,
    /// Reads are allowed without the password.
    pub public: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Settings {
    pub(super) mode: Mode,
    pub(super) max_size: u64,
    /// BLAKE3 of the password, hex; the password itself is never stored.
    pub(super) password_hash: Option<String>,
    pub(super) public: bool,
}

pub(super) fn password_hash(pw: &str) -> String {
    blake3::derive_key("cellos-shard namespace password v1", pw.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Namespace {
    pub fn mode(&self) -> Mode {
        self.lock().settings.mode
    }

    /// True when `password` opens the namespace (or it has none).
    pub fn password_ok(&self, password: Option<&str>) -> bool {
        match (&self.lock().settings.password_hash, password) {
            (None, _) => true,
            // Constant time: how much of a guess's hash matches must not show.
            (Some(h), Some(p)) => bool::from(h.as_bytes().ct_eq(password_hash(p).as_bytes())),
            (Some(_), None) => false,
        }
    }

    pub fn has_password(&self) -> bool {
        self.lock().settings.password_hash.is_some()
    }

    pub fn is_public(&self) -> bool {
        self.lock().settings.public
    }

    /// Changes one setting (NSSET): `maxsize`, `password` (`*` or empty clears
    /// it), `public` (0/1) or `mode` (only while empty). Durable on return.
    pub fn set_property(&self, prop: &str, value: &str) -> Result<()> {
        let mut guard = self.lock();
        let st = self.writable(&mut guard)?;
        let mut s = st.settings.clone();
        let bad = |e: String| NsError::Settings {
            ns: self.name.clone(),
            path: self.dir.join("namespace.json"),
            error: e,
        };
        match prop.to_ascii_lowercase().as_str() {
            "maxsize" => {
                s.max_size = value
                    .parse()
                    .map_err(|_| bad(format!("maxsize {value:?} is not a number of bytes")))?
            }
            "password" => {
                s.password_hash = match value {
                    "" | "*" => None,
                    p => Some(password_hash(p)),
                }
            }
            "public" => s.public = matches!(value, "1" | "true" | "yes"),
            "mode" => {
                let m: Mode = value.parse().map_err(bad)?;
                if m != s.mode {
                    if st.files.iter().any(|f| f.len > 0) {
                        return Err(NsError::ModeLocked {
                            ns: self.name.clone(),
                        });
                    }
                    s.mode = m;
                    st.index = Index::empty(m);
                }
            }
            other => {
                return Err(bad(format!(
                    "unknown property {other:?} (maxsize, password, public, mode)"
                )))
            }
        }
        write_settings(&self.dir, &self.name, &s)?;
        st.settings = s;
        Ok(())
    }
}

pub(super) fn write_settings(dir: &Path, name: &str, s: &Settings) -> Result<()> {
    let path = dir.join("namespace.json");
    let data = serde_json::to_vec_pretty(s).map_err(|e| NsError::Settings {
        ns: name.into(),
        path: path.clone(),
        error: e.to_string(),
    })?;
    Ok(sys::write_atomic(&path, &data)?)
}
