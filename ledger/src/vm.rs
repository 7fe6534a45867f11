//! The `vm` workload: a virtual machine the node runs under QEMU, attached to a
//! tenant network of the same deployment.
//!
//! It boots either a kernel (with an optional initrd and a command line) or a disk
//! image (raw or qcow2). Every file the node fetches for it is named by a URL and
//! pinned by its SHA-256, which the node checks before using a byte of it: the hash
//! is what the owner signs, so the URL may be plain HTTP (a mirror, a registry's
//! blob URL, a test server) without letting anyone on the path change what boots.
//!
//! Checks here need nothing but the workload; the ones that need the rest of the
//! deployment (its network, its volumes, addresses in use) are in
//! [`crate::deployment::Deployment::validate`].

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::container::{check_cpu_memory, printable};
use crate::deployment::Size;

/// At most this many vCPUs per VM.
pub const MAX_CPU: u32 = 64;
/// Memory a VM may reserve: 64 MiB to 1 TiB.
pub const MIN_MEMORY: u64 = 64 << 20;
pub const MAX_MEMORY: u64 = 1 << 40;
/// A kernel or an initrd is at most this large.
pub const MAX_BOOT_FILE: u64 = 1 << 30;
/// A root disk is at most this large (what it reserves on the SSD pool).
pub const MAX_DISK: u64 = 16 << 40;
/// Limits on the rest.
pub const MAX_DISKS: usize = 8;
pub const MAX_SSH_KEYS: usize = 16;
pub const MAX_CMDLINE: usize = 2048;

/// A file the node fetches: where from, and the hash it must have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// `http://` or `https://`.
    pub url: String,
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
}

/// The format of a root disk image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskFormat {
    #[default]
    Raw,
    Qcow2,
}

/// A root disk made from an image: the node copies it, and a raw image is grown
/// to `size`; a qcow2 image's virtual size must not be larger than `size`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootDisk {
    /// `http://` or `https://`.
    pub url: String,
    /// Lowercase hex SHA-256 of the image.
    pub sha256: String,
    #[serde(default)]
    pub format: DiskFormat,
    /// The disk's size, reserved on the node's SSD pool (SRU).
    pub size: Size,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// A kernel to boot directly; exactly one of `kernel` and `disk` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Artifact>,
    /// An initrd for `kernel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<Artifact>,
    /// The kernel's command line (with `kernel` only); empty: `console=ttyS0`.
    #[serde(default)]
    pub cmdline: String,
    /// A root disk image to boot from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<RootDisk>,
    /// vCPUs, reserved as CRU.
    pub cpu: u32,
    /// Guest memory, reserved as MRU.
    pub memory: Size,
    /// Volume workloads of this deployment, attached in order as raw disks.
    #[serde(default)]
    pub disks: Vec<String>,
    /// The network workload of this deployment the VM joins.
    pub network: String,
    /// Its address in this node's subnet of that network (given to the guest in
    /// its config drive).
    pub ip: Ipv4Addr,
    /// `ssh-ed25519 AAAA... comment` lines for the config drive.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
}

fn check_source(what: &str, url: &str, sha256: &str) -> Result<(), String> {
    let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
    if !scheme_ok || url.len() > 1024 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{what}.url {url:?} must be an http:// or https:// URL without spaces, at most 1024 characters"
        ));
    }
    if sha256.len() != 64
        || !sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "{what}.sha256 {sha256:?} must be 64 lowercase hex digits"
        ));
    }
    Ok(())
}

impl Artifact {
    fn check(&self, what: &str) -> Result<(), String> {
        check_source(what, &self.url, &self.sha256)
    }
}

impl VmSpec {
    /// Checks the fields on their own; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        match (&self.kernel, &self.disk) {
            (Some(k), None) => {
                k.check("kernel")?;
                if let Some(i) = &self.initrd {
                    i.check("initrd")?;
                }
            }
            (None, Some(d)) => {
                check_source("disk", &d.url, &d.sha256)?;
                if self.initrd.is_some() || !self.cmdline.is_empty() {
                    return Err("initrd and cmdline go with kernel, not with disk".into());
                }
                if d.size.0 < (1 << 20) || d.size.0 > MAX_DISK {
                    return Err(format!(
                        "disk.size {} is outside {}..{}",
                        d.size,
                        Size(1 << 20),
                        Size(MAX_DISK)
                    ));
                }
            }
            _ => return Err("give exactly one of kernel and disk".into()),
        }
        if self.cmdline.len() > MAX_CMDLINE || !printable(&self.cmdline) {
            return Err(format!(
                "cmdline must be at most {MAX_CMDLINE} printable characters"
            ));
        }
        check_cpu_memory(self.cpu, MAX_CPU, self.memory, MIN_MEMORY, MAX_MEMORY)?;
        if self.disks.len() > MAX_DISKS {
            return Err(format!(
                "{} disks; at most {MAX_DISKS} are allowed",
                self.disks.len()
            ));
        }
        for (i, d) in self.disks.iter().enumerate() {
            if self.disks[..i].contains(d) {
                return Err(format!("disks[{i}]: volume {d:?} is attached twice"));
            }
        }
        if self.ssh_keys.len() > MAX_SSH_KEYS {
            return Err(format!("at most {MAX_SSH_KEYS} ssh_keys are allowed"));
        }
        for (i, k) in self.ssh_keys.iter().enumerate() {
            let mut parts = k.split(' ');
            let kind_ok = parts
                .next()
                .is_some_and(|t| t.starts_with("ssh-") || t.starts_with("ecdsa-"));
            let body_ok = parts.next().is_some_and(|b| !b.is_empty());
            if !kind_ok || !body_ok || k.len() > 8192 || !printable(k) {
                return Err(format!(
                    "ssh_keys[{i}] must be one line like \"ssh-ed25519 AAAA... comment\""
                ));
            }
        }
        Ok(())
    }

    /// The root disk's size, reserved on the SSD pool; zero for a kernel boot.
    pub fn disk_size(&self) -> u64 {
        self.disk.as_ref().map_or(0, |d| d.size.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn spec() -> VmSpec {
        VmSpec {
            kernel: Some(Artifact {
                url: "http://10.0.2.2:8000/vmlinuz".into(),
                sha256: "ab".repeat(32),
            }),
            initrd: None,
            cmdline: "console=ttyS0".into(),
            disk: None,
            cpu: 1,
            memory: Size(128 << 20),
            disks: vec!["data".into()],
            network: "net".into(),
            ip: "10.20.1.6".parse().expect("ip"),
            ssh_keys: vec!["ssh-ed25519 AAAAC3Nz me@host".into()],
        }
    }

    #[test]
    fn a_good_spec_passes_and_each_bad_field_is_named() {
        assert_eq!(spec().check(), Ok(()));
        let disk = RootDisk {
            url: "https://example.org/root.qcow2".into(),
            sha256: "0".repeat(64),
            format: DiskFormat::Qcow2,
            size: Size(1 << 30),
        };
        type Break = Box<dyn Fn(&mut VmSpec)>;
        let cases: Vec<(Break, &str)> = vec![
            (Box::new(|s| s.kernel = None), "exactly one"),
            (
                Box::new(move |s| s.disk = Some(disk.clone())),
                "exactly one",
            ),
            (
                Box::new(|s| {
                    s.kernel = None;
                    s.disk = Some(RootDisk {
                        url: "https://example.org/root.img".into(),
                        sha256: "0".repeat(64),
                        format: DiskFormat::Raw,
                        size: Size(1 << 30),
                    });
                }),
                "cmdline go with kernel",
            ),
            (
                Box::new(|s| {
                    if let Some(k) = &mut s.kernel {
                        k.url = "file:///etc/passwd".into()
                    }
                }),
                "kernel.url",
            ),
            (
                Box::new(|s| {
                    if let Some(k) = &mut s.kernel {
                        k.sha256 = "AB".repeat(32)
                    }
                }),
                "kernel.sha256",
            ),
            (
                Box::new(|s| {
                    s.initrd = Some(Artifact {
                        url: "http://x/i".into(),
                        sha256: "12".into(),
                    })
                }),
                "initrd.sha256",
            ),
            (Box::new(|s| s.cpu = 0), "cpu"),
            (Box::new(|s| s.memory = Size(1 << 20)), "memory"),
            (Box::new(|s| s.cmdline = "a\nb".into()), "cmdline"),
            (Box::new(|s| s.disks.push("data".into())), "twice"),
            (
                Box::new(|s| s.ssh_keys = vec!["hello".into()]),
                "ssh_keys[0]",
            ),
        ];
        for (break_it, field) in cases {
            let mut s = spec();
            break_it(&mut s);
            let err = s.check().expect_err(field);
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn toml_spelling() {
        let s: VmSpec = toml::from_str(
            r#"
            cpu = 1
            memory = "256M"
            network = "net"
            ip = "10.20.1.6"
            [disk]
            url = "https://example.org/root.qcow2"
            sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
            format = "qcow2"
            size = "2G"
            "#,
        )
        .expect("toml");
        assert_eq!(s.check(), Ok(()));
        assert_eq!(s.disk_size(), 2 << 30);
        assert!(toml::from_str::<VmSpec>(
            "cpu = 1\nmemory = 1\nnetwork = \"n\"\nip = \"10.0.0.1\"\nbogus = 1"
        )
        .is_err());
    }
}
