//! The `container` workload (DESIGN §4): an OCI image run on the node, attached to a
//! tenant network of the same deployment.
//!
//! What the owner signs is everything the node needs: the image reference, the
//! command and environment, the CPU and memory it reserves, where volumes of the same
//! deployment are mounted, and its address on the network. The node pulls the image
//! itself and checks every blob against its digest, so an image given by digest
//! (`@sha256:...`) pins exactly what runs; a tag pins only a name.
//!
//! Checks here are the ones that need nothing but the workload; the ones that need
//! the rest of the deployment (the network and volumes it names, addresses in use)
//! are in [`crate::deployment::Deployment::validate`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::deployment::Size;

/// At most this many vCPUs per container.
pub const MAX_CPU: u32 = 64;
/// Memory a container may reserve: 16 MiB to 1 TiB.
pub const MIN_MEMORY: u64 = 16 << 20;
pub const MAX_MEMORY: u64 = 1 << 40;
/// Limits on what an owner may put in the command, environment and mounts.
pub const MAX_ARGS: usize = 256;
pub const MAX_ENV_BYTES: usize = 32 << 10;
pub const MAX_MOUNTS: usize = 16;

/// What the node does when the container's process ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Start it again whatever happened (with a backoff).
    Always,
    /// Start it again when it failed: a non-zero exit, a signal, an OOM kill.
    #[default]
    OnFailure,
    /// Leave it stopped.
    Never,
}

/// A volume workload of the same deployment, mounted at `path` in the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerMount {
    pub volume: String,
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// `registry[:port]/repository[:tag]` or `...@sha256:<hex>`.
    pub image: String,
    /// The command; empty: the image's entrypoint and cmd.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Added to (and overriding) the image's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// vCPUs reserved (CRU) and the container's CPU limit.
    pub cpu: u32,
    /// Memory reserved (MRU) and the container's memory limit.
    pub memory: Size,
    #[serde(default)]
    pub mounts: Vec<ContainerMount>,
    /// The network workload of this deployment the container joins.
    pub network: String,
    /// Its address in this node's subnet of that network.
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub restart: Restart,
    /// Mount the image's root file system read-only.
    #[serde(default)]
    pub read_only: bool,
}

pub(crate) fn printable(s: &str) -> bool {
    !s.chars().any(|c| c.is_control())
}

fn env_name(k: &str) -> bool {
    let mut c = k.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A workload's vCPUs in `1..=max_cpu` and memory in `min..=max` bytes (containers
/// and VMs); the error names the field.
pub(crate) fn check_cpu_memory(
    cpu: u32,
    max_cpu: u32,
    memory: Size,
    min: u64,
    max: u64,
) -> Result<(), String> {
    if cpu == 0 || cpu > max_cpu {
        return Err(format!("cpu {cpu} is outside 1..{max_cpu}"));
    }
    if memory.0 < min || memory.0 > max {
        return Err(format!(
            "memory {memory} is outside {}..{}",
            Size(min),
            Size(max)
        ));
    }
    Ok(())
}

/// An absolute, normalised path that is not `/`: no `.`/`..` components, no empty
/// ones, printable.
pub fn mount_path_ok(p: &str) -> bool {
    p.len() > 1
        && p.len() <= 255
        && p.starts_with('/')
        && printable(p)
        && p[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

impl ContainerSpec {
    /// Checks the fields on their own; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        let image = self.image.trim();
        if image.is_empty()
            || image != self.image
            || self.image.len() > 512
            || self
                .image
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "image {:?} must be a reference like registry/repo:tag, without spaces, at most 512 characters",
                self.image
            ));
        }
        if self.cmd.len() > MAX_ARGS || self.cmd.iter().any(|a| a.len() > 4096) {
            return Err(format!(
                "cmd must have at most {MAX_ARGS} arguments of at most 4096 bytes"
            ));
        }
        if self.cmd.iter().any(|a| a.contains('\0')) {
            return Err("cmd must not contain NUL bytes".into());
        }
        let env: usize = self.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        if env > MAX_ENV_BYTES {
            return Err(format!(
                "env is {env} bytes; at most {MAX_ENV_BYTES} are allowed"
            ));
        }
        if let Some((k, _)) = self
            .env
            .iter()
            .find(|(k, v)| !env_name(k) || v.contains('\0'))
        {
            return Err(format!(
                "env {k:?}: names are letters, digits and '_' (not starting with a digit), values have no NUL"
            ));
        }
        check_cpu_memory(self.cpu, MAX_CPU, self.memory, MIN_MEMORY, MAX_MEMORY)?;
        if self.mounts.len() > MAX_MOUNTS {
            return Err(format!(
                "{} mounts; at most {MAX_MOUNTS} are allowed",
                self.mounts.len()
            ));
        }
        for (i, m) in self.mounts.iter().enumerate() {
            if !mount_path_ok(&m.path) {
                return Err(format!(
                    "mounts[{i}]: path {:?} must be absolute and normalised (no '.', '..' or '//'), not /",
                    m.path
                ));
            }
            if self.mounts[..i].iter().any(|o| o.path == m.path) {
                return Err(format!("mounts[{i}]: path {} is used twice", m.path));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn spec() -> ContainerSpec {
        ContainerSpec {
            image: "10.0.2.2:5000/hello:1".into(),
            cmd: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            env: [("GREETING".to_string(), "hi".to_string())].into(),
            cpu: 1,
            memory: Size(64 << 20),
            mounts: vec![ContainerMount {
                volume: "data".into(),
                path: "/data".into(),
            }],
            network: "net".into(),
            ip: "10.20.1.5".parse().expect("ip"),
            restart: Restart::OnFailure,
            read_only: false,
        }
    }

    #[test]
    fn a_good_spec_passes_and_each_bad_field_is_named() {
        assert_eq!(spec().check(), Ok(()));
        type Break = fn(&mut ContainerSpec);
        let cases: Vec<(Break, &str)> = vec![
            (|s| s.image = String::new(), "image"),
            (|s| s.image = "a b".into(), "image"),
            (|s| s.image = " x".into(), "image"),
            (|s| s.cpu = 0, "cpu"),
            (|s| s.cpu = 65, "cpu"),
            (|s| s.memory = Size(1 << 20), "memory"),
            (|s| s.memory = Size(2 << 40), "memory"),
            (|s| s.cmd = vec!["a\0b".into()], "NUL"),
            (|s| s.cmd = vec![String::new(); 300], "cmd"),
            (
                |s| {
                    s.env.insert("1BAD".into(), "x".into());
                },
                "env",
            ),
            (
                |s| {
                    s.env.insert("BIG".into(), "x".repeat(40 << 10));
                },
                "env",
            ),
            (|s| s.mounts[0].path = "/".into(), "mounts[0]"),
            (|s| s.mounts[0].path = "data".into(), "mounts[0]"),
            (|s| s.mounts[0].path = "/a/../etc".into(), "mounts[0]"),
            (|s| s.mounts[0].path = "/a//b".into(), "mounts[0]"),
            (
                |s| {
                    let m = s.mounts[0].clone();
                    s.mounts.push(m);
                },
                "used twice",
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
        let s: ContainerSpec = toml::from_str(
            r#"
            image = "10.0.2.2:5000/hello:1"
            cpu = 1
            memory = "64M"
            network = "net"
            ip = "10.20.1.5"
            restart = "on-failure"
            "#,
        )
        .expect("toml");
        assert_eq!(s.memory, Size(64 << 20));
        assert_eq!(s.restart, Restart::OnFailure);
        assert!(s.cmd.is_empty() && s.mounts.is_empty() && !s.read_only);
        assert!(toml::from_str::<ContainerSpec>(
            "image = \"x\"\ncpu = 1\nmemory = 1\nnetwork = \"n\"\nip = \"10.0.0.1\"\nbogus = 1"
        )
        .is_err());
    }
}
