//! Farms: CreateFarm and the farm's public IPs.

use super::{Event, State, TxError};
use crate::types::*;

const MAX_FARM_IPS: usize = 4096;

/// Accepts `a.b.c.d/len` and IPv6 `x::y/len`.
fn check_cidr(ip: &str) -> Result<(), TxError> {
    let bad = |reason: &str| TxError::BadIp {
        ip: ip.to_string(),
        reason: reason.to_string(),
    };
    let (addr, len) = ip
        .split_once('/')
        .ok_or_else(|| bad("expected address/prefix"))?;
    let addr: std::net::IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
    let len: u8 = len.parse().map_err(|_| bad("prefix is not a number"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(bad("prefix too long"));
    }
    Ok(())
}

impl State {
    /// CreateFarm: a farm under a name nobody has taken.
    pub(super) fn create_farm(
        &mut self,
        signer: PublicKey,
        name: &str,
        prices: Prices,
        enrollment_key: Option<PublicKey>,
    ) -> Result<Vec<Event>, TxError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid {
            return Err(TxError::BadFarmName(name.to_string()));
        }
        if self.farm_names.contains_key(name) {
            return Err(TxError::FarmNameTaken(name.to_string()));
        }
        let id = self.next_farm;
        self.next_farm = id.checked_add(1).ok_or(TxError::Overflow("farm id"))?;
        self.farm_names.insert(name.to_string(), id);
        self.farms.insert(
            id,
            Farm {
                id,
                owner: signer,
                name: name.to_string(),
                prices,
                public_ips: Vec::new(),
                enrollment_key,
            },
        );
        Ok(vec![Event::FarmCreated {
            farm: id,
            name: name.to_string(),
        }])
    }

    /// AddFarmIp: a public IP the farm's contracts can lease.
    pub(super) fn add_farm_ip(
        &mut self,
        signer: PublicKey,
        farm: FarmId,
        ip: &str,
        gateway: &str,
    ) -> Result<Vec<Event>, TxError> {
        let f = self.owned_farm(&signer, farm)?;
        check_cidr(ip)?;
        gateway
            .parse::<std::net::IpAddr>()
            .map_err(|_| TxError::BadIp {
                ip: gateway.to_string(),
                reason: "gateway is not an IP address".into(),
            })?;
        if f.public_ips.iter().any(|p| p.ip == ip) {
            return Err(TxError::IpExists {
                farm,
                ip: ip.to_string(),
            });
        }
        if f.public_ips.len() >= MAX_FARM_IPS {
            return Err(TxError::TooLong {
                what: "farm IPs",
                len: f.public_ips.len() + 1,
                max: MAX_FARM_IPS,
            });
        }
        self.farm_mut(farm)?.public_ips.push(PublicIp {
            ip: ip.to_string(),
            gateway: gateway.to_string(),
            leased_by: None,
        });
        Ok(vec![Event::FarmIpAdded {
            farm,
            ip: ip.to_string(),
        }])
    }

    /// RemoveFarmIp: only an IP no contract leases.
    pub(super) fn remove_farm_ip(
        &mut self,
        signer: PublicKey,
        farm: FarmId,
        ip: &str,
    ) -> Result<Vec<Event>, TxError> {
        let f = self.owned_farm(&signer, farm)?;
        let pos = f
            .public_ips
            .iter()
            .position(|p| p.ip == ip)
            .ok_or_else(|| TxError::NoIp {
                farm,
                ip: ip.to_string(),
            })?;
        if let Some(c) = f.public_ips[pos].leased_by {
            return Err(TxError::IpLeased {
                ip: ip.to_string(),
                contract: c,
            });
        }
        self.farm_mut(farm)?.public_ips.remove(pos);
        Ok(vec![Event::FarmIpRemoved {
            farm,
            ip: ip.to_string(),
        }])
    }

    // ---- lookups that produce the right error ---------------------------------

    pub(super) fn farm_mut(&mut self, id: FarmId) -> Result<&mut Farm, TxError> {
        self.farms.get_mut(&id).ok_or(TxError::NoFarm(id))
    }
    pub(super) fn owned_farm(&self, signer: &PublicKey, id: FarmId) -> Result<&Farm, TxError> {
        let f = self.farms.get(&id).ok_or(TxError::NoFarm(id))?;
        if &f.owner != signer {
            return Err(TxError::NotFarmOwner(id));
        }
        Ok(f)
    }
}
