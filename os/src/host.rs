//! The machine as the registrar sees it: the capacity module's inventory of the real
//! /proc and /sys, with SRU and HRU taken from the storage pools (what the node can
//! actually give out, not the raw disks: a disk left alone is not for sale), and
//! /proc/uptime.

use std::time::Duration;

use cellos_capacity::sys::SystemAddresses;
use cellos_capacity::{CapacityError, HostPaths, Inventory};
use cellos_ledger::deployment::Size;
use cellos_registrar::{Capacity, Host};
use cellos_storage::Storage;

pub struct Machine {
    paths: HostPaths,
    /// SSD and HDD pool bytes; pools are made at start, so they are fixed here.
    sru: u64,
    hru: u64,
    /// The last inventory line printed, so a change is shown once, not every time.
    last_line: Option<String>,
}

impl Machine {
    pub fn new(paths: HostPaths, storage: &Storage) -> Self {
        Machine {
            paths,
            sru: storage.sru(),
            hru: storage.hru(),
            last_line: None,
        }
    }
}

impl Host for Machine {
    type Error = CapacityError;

    fn measure(&mut self) -> Result<Capacity, CapacityError> {
        let mut inv = cellos_capacity::measure(&self.paths, &SystemAddresses)?;
        inv.resources.sru = self.sru;
        inv.resources.hru = self.hru;
        let line = describe(&inv);
        if self.last_line.as_ref() != Some(&line) {
            println!("{line}");
            self.last_line = Some(line);
        }
        Ok(Capacity {
            resources: inv.resources,
            interfaces: inv.interfaces,
            gpus: inv.gpus,
            accel: cellos_capacity::accel(),
        })
    }

    fn uptime(&mut self) -> Result<Duration, CapacityError> {
        cellos_capacity::uptime(&self.paths)
    }
}

/// One console line with everything measured, so a wrong number can be traced to
/// the device behind it.
fn describe(inv: &Inventory) -> String {
    let disks: Vec<String> = inv
        .disks
        .iter()
        .map(|d| {
            let kind = match (d.removable, d.rotational) {
                (true, _) => "removable",
                (false, true) => "hdd",
                (false, false) => "ssd",
            };
            format!("{} {} {kind}", d.name, Size(d.size))
        })
        .collect();
    let nics: Vec<String> = inv
        .interfaces
        .iter()
        .map(|i| {
            let mut s = format!("{} {}", i.name, i.mac);
            for ip in &i.ips {
                s.push(' ');
                s.push_str(ip);
            }
            s
        })
        .collect();
    let gpus: Vec<String> = inv
        .gpus
        .iter()
        .map(|g| format!("{} {:04x}:{:04x}", g.address, g.vendor, g.device))
        .collect();
    let mut line = format!(
        "cellosd: measured {}; disks: {}; nics: {}; gpus: {}",
        inv.resources,
        none_if_empty(disks.join(", ")),
        none_if_empty(nics.join(", ")),
        none_if_empty(gpus.join(", ")),
    );
    for e in &inv.skipped {
        // Each holds at most an OS error as its source.
        let cause = std::error::Error::source(e).map(|c| format!(": {c}"));
        line.push_str(&format!("; skipped {e}{}", cause.unwrap_or_default()));
    }
    line
}

fn none_if_empty(s: String) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellos_capacity::Disk;
    use cellos_ledger::{Gpu, Interface, Resources, GIB};

    #[test]
    fn describes_the_inventory_in_one_line() {
        let inv = Inventory {
            resources: Resources {
                cru: 2,
                mru: 2 * GIB,
                sru: 20 * GIB,
                hru: 0,
            },
            disks: vec![
                Disk {
                    name: "sdb".into(),
                    size: 8 * GIB,
                    rotational: true,
                    removable: true,
                },
                Disk {
                    name: "vda".into(),
                    size: 20 * GIB,
                    rotational: false,
                    removable: false,
                },
            ],
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "52:54:00:12:34:56".into(),
                ips: vec!["10.0.2.15/24".into()],
            }],
            gpus: vec![Gpu {
                address: "0000:00:01.0".into(),
                vendor: 0x1234,
                device: 0x1111,
                iommu_group: None,
            }],
            skipped: vec![],
        };
        assert_eq!(
            describe(&inv),
            "cellosd: measured cru=2 mru=2.0GiB sru=20.0GiB hru=0B; disks: sdb 8.0GiB removable, vda 20.0GiB ssd; nics: eth0 52:54:00:12:34:56 10.0.2.15/24; gpus: 0000:00:01.0 1234:1111"
        );
        let empty = Inventory {
            disks: vec![],
            interfaces: vec![],
            gpus: vec![],
            ..inv
        };
        assert!(describe(&empty).ends_with("disks: none; nics: none; gpus: none"));
    }
}
