//! An in-memory [`Volumes`] for the unit tests of crates that use volumes (the
//! provision engine): same rules as the real one (idempotent create and delete,
//! sizes checked against a capacity), no disks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use crate::pools::{DiskKind, PoolName};
use crate::volumes::MIN_VOLUME;
use crate::{StorageError, VolumeInfo, VolumeName, Volumes};

/// Volumes on one pretend SSD pool of `capacity` bytes mounted at `/mnt/ssd0`.
#[derive(Debug)]
pub struct MemVolumes {
    capacity: u64,
    volumes: Mutex<BTreeMap<VolumeName, VolumeInfo>>,
}

impl MemVolumes {
    pub fn new(capacity: u64) -> Self {
        MemVolumes {
            capacity,
            volumes: Mutex::new(BTreeMap::new()),
        }
    }

    /// Pretends a workload wrote into the volume.
    pub fn set_used(&self, name: &VolumeName, used: u64) -> Result<(), StorageError> {
        let mut v = self.volumes.lock().unwrap_or_else(PoisonError::into_inner);
        match v.get_mut(name) {
            Some(info) => {
                info.used = used;
                Ok(())
            }
            None => Err(StorageError::NoVolume { name: name.clone() }),
        }
    }
}

impl Volumes for MemVolumes {
    fn create(&self, name: &VolumeName, size: u64) -> Result<VolumeInfo, StorageError> {
        if size < MIN_VOLUME {
            return Err(StorageError::BadVolumeSize {
                name: name.clone(),
                size,
            });
        }
        let mut v = self.volumes.lock().unwrap_or_else(PoisonError::into_inner);
        let promised = v
            .values()
            .filter(|i| &i.name != name)
            .fold(0u64, |s, i| s.saturating_add(i.size));
        let room = self.capacity.saturating_sub(promised);
        if size > room && !v.contains_key(name) {
            return Err(StorageError::NoSpace {
                name: name.clone(),
                wanted: size,
                largest: room,
            });
        }
        let pool = PoolName::new(DiskKind::Ssd, 0);
        let info = v.entry(name.clone()).or_insert_with(|| VolumeInfo {
            name: name.clone(),
            pool,
            path: PathBuf::from(format!("/mnt/{pool}/volumes/{name}")),
            size,
            used: 0,
        });
        info.size = size;
        Ok(info.clone())
    }

    fn delete(&self, name: &VolumeName) -> Result<(), StorageError> {
        let mut v = self.volumes.lock().unwrap_or_else(PoisonError::into_inner);
        v.remove(name);
        Ok(())
    }

    fn list(&self) -> Result<Vec<VolumeInfo>, StorageError> {
        let v = self.volumes.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(v.values().cloned().collect())
    }

    fn usage(&self, name: &VolumeName) -> Result<VolumeInfo, StorageError> {
        let v = self.volumes.lock().unwrap_or_else(PoisonError::into_inner);
        v.get(name)
            .cloned()
            .ok_or_else(|| StorageError::NoVolume { name: name.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_the_real_one() {
        let vols = MemVolumes::new(100 << 20);
        let a = VolumeName::new("a").expect("name");
        let b = VolumeName::new("b").expect("name");
        assert_eq!(vols.create(&a, 60 << 20).expect("create").size, 60 << 20);
        assert!(
            matches!(vols.create(&b, 50 << 20), Err(StorageError::NoSpace { largest, .. }) if largest == 40 << 20)
        );
        assert_eq!(vols.create(&a, 90 << 20).expect("resize").size, 90 << 20);
        vols.set_used(&a, 5).expect("used");
        assert_eq!(vols.usage(&a).expect("usage").used, 5);
        assert_eq!(vols.list().expect("list").len(), 1);
        vols.delete(&a).expect("delete");
        vols.delete(&a).expect("delete again");
        assert!(matches!(vols.usage(&a), Err(StorageError::NoVolume { .. })));
        assert!(matches!(
            vols.create(&a, 10),
            Err(StorageError::BadVolumeSize { .. })
        ));
    }
}
