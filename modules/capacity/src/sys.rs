//! The OS boundary of the inventory: interface addresses from `getifaddrs(3)` and
//! the KVM device's API version (an ioctl).
//!
//! Everything else the crate reads is a file under [`crate::HostPaths`].

use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::{Addresses, CapacityError, IfAddr};

/// The host's own addresses.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemAddresses;

impl Addresses for SystemAddresses {
    fn ipv4(&self) -> Result<Vec<IfAddr>, CapacityError> {
        let all = nix::ifaddrs::getifaddrs()
            .map_err(|errno| CapacityError::Addresses(std::io::Error::from(errno)))?;
        Ok(all
            .filter_map(|a| {
                let ip = a.address.as_ref()?.as_sockaddr_in()?.ip();
                let prefix = a
                    .netmask
                    .as_ref()
                    .and_then(|m| m.as_sockaddr_in())
                    .map_or(32, |m| prefix_len(m.ip()));
                Some(IfAddr {
                    interface: a.interface_name,
                    cidr: format!("{ip}/{prefix}"),
                })
            })
            .collect())
    }
}

// KVM_GET_API_VERSION is _IO(KVMIO, 0x00) with KVMIO = 0xAE (linux/kvm.h).
nix::ioctl_none!(kvm_get_api_version, 0xAE, 0x00);

/// The hypervisor's CPUID signature (leaf 0x4000_0000: `KVMKVMKVM\0\0\0`,
/// `TCGTCGTCGTCG`, ...) when the CPU says it runs under one.
#[cfg(target_arch = "x86_64")]
// `__cpuid` is an unsafe fn up to Rust 1.86 (the MSRV is 1.80), safe after.
#[allow(unused_unsafe)]
pub(crate) fn hypervisor_signature() -> Option<[u8; 12]> {
    use std::arch::x86_64::__cpuid;
    // SAFETY: CPUID exists on every x86_64 CPU and only reads registers. Leaf 1
    // ECX bit 31 says whether the hypervisor leaves are there.
    let leaf1 = unsafe { __cpuid(1) };
    if leaf1.ecx & (1 << 31) == 0 {
        return None;
    }
    // SAFETY: as above; the hypervisor leaf is defined when bit 31 is set.
    let hv = unsafe { __cpuid(0x4000_0000) };
    let mut sig = [0u8; 12];
    sig[..4].copy_from_slice(&hv.ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&hv.ecx.to_le_bytes());
    sig[8..].copy_from_slice(&hv.edx.to_le_bytes());
    Some(sig)
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn hypervisor_signature() -> Option<[u8; 12]> {
    None
}

/// Opens the KVM device read-write, as QEMU does, and asks its API version.
pub(crate) fn kvm_api_version(dev: &Path) -> std::io::Result<i32> {
    let f = OpenOptions::new().read(true).write(true).open(dev)?;
    // SAFETY: KVM_GET_API_VERSION takes no argument and writes no memory; `f` keeps
    // the descriptor open for the call. On another device it fails with ENOTTY.
    let v = unsafe { kvm_get_api_version(f.as_raw_fd()) }?;
    Ok(v)
}

fn prefix_len(mask: Ipv4Addr) -> u32 {
    u32::from(mask).count_ones()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed_with_its_prefix() {
        let addrs = SystemAddresses.ipv4().expect("getifaddrs");
        assert!(
            addrs
                .iter()
                .any(|a| a.interface == "lo" && a.cidr == "127.0.0.1/8"),
            "{addrs:?}"
        );
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 255, 0)), 24);
    }
}
