//! The config drive every VM gets: cloud-init's NoCloud data source, a small FAT
//! volume labelled `cidata` holding `meta-data` (instance id, hostname),
//! `user-data` (the owner's ssh keys) and `network-config` (version 2: the NIC,
//! matched by its MAC, with the workload's address and the network's gateway).
//!
//! Any cloud image with cloud-init configures itself from it; a guest without
//! cloud-init can mount it and read the same files (the tests' tiny guest does).
//! It is written in Rust (`fatfs`), so the node carries no mkfs or mtools, and it
//! is written whole into a temporary file and renamed, so a VM never boots with
//! half a drive. Values are written as JSON strings, which YAML reads as they are:
//! nothing the owner wrote can add a key.

use std::io::Write as _;
use std::path::Path;

use crate::{io, VmError};

/// The drive's size: FAT12 with room to spare for a few KiB of files.
const SIZE: u64 = 1 << 20;

/// What goes on the drive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudInit {
    pub instance_id: String,
    pub hostname: String,
    pub mac: String,
    /// `address/prefix`.
    pub address: String,
    pub gateway: String,
    pub ssh_keys: Vec<String>,
}

fn q(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

impl CloudInit {
    pub fn meta_data(&self) -> String {
        format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            q(&self.instance_id),
            q(&self.hostname)
        )
    }

    pub fn user_data(&self) -> String {
        let mut s = String::from("#cloud-config\n");
        if !self.ssh_keys.is_empty() {
            s.push_str("ssh_authorized_keys:\n");
            for k in &self.ssh_keys {
                s.push_str(&format!("  - {}\n", q(k)));
            }
        }
        s
    }

    pub fn network_config(&self) -> String {
        format!(
            "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: {}\n    set-name: eth0\n    addresses: [{}]\n    gateway4: {}\n",
            q(&self.mac),
            q(&self.address),
            q(&self.gateway)
        )
    }

    /// Writes the drive to `path` (replacing it).
    pub fn write(&self, path: &Path) -> Result<(), VmError> {
        let fail = |reason: String| VmError::Drive {
            path: path.to_path_buf(),
            reason,
        };
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io("creating", &tmp))?;
        f.set_len(SIZE).map_err(io("sizing", &tmp))?;
        fatfs::format_volume(
            &mut f,
            fatfs::FormatVolumeOptions::new().volume_label(*b"cidata     "),
        )
        .map_err(|e| fail(format!("formatting: {e}")))?;
        use std::io::Seek as _;
        f.rewind().map_err(io("writing", &tmp))?;
        {
            let fs = fatfs::FileSystem::new(&mut f, fatfs::FsOptions::new())
                .map_err(|e| fail(format!("opening: {e}")))?;
            for (name, text) in [
                ("meta-data", self.meta_data()),
                ("user-data", self.user_data()),
                ("network-config", self.network_config()),
            ] {
                let mut file = fs
                    .root_dir()
                    .create_file(name)
                    .map_err(|e| fail(format!("{name}: {e}")))?;
                file.truncate()
                    .and_then(|()| file.write_all(text.as_bytes()))
                    .and_then(|()| file.flush())
                    .map_err(|e| fail(format!("{name}: {e}")))?;
            }
            fs.unmount().map_err(|e| fail(format!("closing: {e}")))?;
        }
        f.sync_all().map_err(io("writing", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("renaming", &tmp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn data() -> CloudInit {
        CloudInit {
            instance_id: "c12-box".into(),
            hostname: "box".into(),
            mac: "02:aa:bb:cc:dd:ee".into(),
            address: "10.20.1.6/24".into(),
            gateway: "10.20.1.1".into(),
            ssh_keys: vec!["ssh-ed25519 AAAA me\": evil: yes".into()],
        }
    }

    #[test]
    fn the_drive_is_a_cidata_fat_with_the_three_files() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("config.img");
        let d = data();
        d.write(&path).expect("write");
        let f = std::fs::File::open(&path).expect("open");
        let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new()).expect("a FAT volume");
        assert_eq!(fs.volume_label().trim_end(), "cidata");
        let read = |name: &str| {
            let mut s = String::new();
            fs.root_dir()
                .open_file(name)
                .expect(name)
                .read_to_string(&mut s)
                .expect("read");
            s
        };
        assert_eq!(read("meta-data"), d.meta_data());
        assert!(read("meta-data").contains("local-hostname: \"box\""));
        assert_eq!(read("network-config"), d.network_config());
        assert!(read("network-config").contains("addresses: [\"10.20.1.6/24\"]"));
        let user = read("user-data");
        assert!(user.starts_with("#cloud-config\n"), "{user}");
        // The key's quote and colons stay inside one YAML string.
        assert!(
            user.contains("  - \"ssh-ed25519 AAAA me\\\": evil: yes\"\n"),
            "{user}"
        );
        assert!(!path.with_extension("tmp").exists());
    }
}
