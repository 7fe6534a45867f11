//! The OS boundary of the inventory: interface addresses from `getifaddrs(3)`.
//!
//! Everything else the crate reads is a file under [`crate::HostPaths`].

use std::net::Ipv4Addr;

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
