//! cellos-network: tenant networks on a node (DESIGN §4, issue 14).
//!
//! Input: a `network` workload ([`NetworkSpec`]: a /16 range, this node's /24, a
//! WireGuard key and port, the peers) and the workload's node-unique name. Output,
//! per network on this node: a network namespace bind-mounted at
//! `/run/netns/n-<hash>` (it outlives cellosd), a bridge `b-<hash>` inside it with
//! the subnet's gateway `.1` for local workloads, a WireGuard device `w-<hash>`
//! created in the host namespace (its UDP socket stays on the uplink) and moved into
//! the namespace with the route for the whole range, forwarding on inside the
//! namespace only, and an nftables ruleset there ([`ruleset`]). See README.md for
//! why the bridge lives inside the namespace.
//!
//! [`Networks::ensure`] converges (a restart or a reboot rebuilds what is missing,
//! an update changes peers on the live device); [`Networks::remove`] takes it all
//! down. [`Networks::attach`] gives a workload (a container) a namespace of its own
//! with one interface, a veth whose other end is a port of the network's bridge;
//! [`Networks::detach`] removes both. This crate never forks `ip` or `wg`, never logs or returns the private key,
//! and never changes the namespace of any thread but its own short-lived ones.

mod names;
pub mod ruleset;
pub mod sys;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use cellos_ledger::network::{Ipv4Net, NetworkSpec, WgKey};

pub use names::{Names, WorkloadNames};
pub use sys::{wireguard_available, Linux, PeerStatus, Sys, SysError};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network {key}: {reason}")]
    BadSpec { key: String, reason: String },
    #[error("network {key}: this kernel has no WireGuard (the `wireguard` module is not loaded)")]
    NoWireGuard { key: String },
    #[error("network {key}: {step}")]
    Sys {
        key: String,
        step: &'static str,
        #[source]
        source: SysError,
    },
    #[error("workload {workload}: network {network} is not on this node")]
    NoNetwork { network: String, workload: String },
    #[error("workload {workload}: {reason}")]
    BadAttachment { workload: String, reason: String },
    #[error("workload {workload}: {step}")]
    Workload {
        workload: String,
        step: &'static str,
        #[source]
        source: SysError,
    },
}

/// The one interface a workload sees in its namespace (besides `lo`).
pub const WORKLOAD_INTERFACE: &str = "eth0";

/// A workload's place on a network, as [`Networks::attach`] left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub names: WorkloadNames,
    /// The workload's namespace (`/run/netns/c-<hash>`), for its processes to join.
    pub netns_path: PathBuf,
    /// The workload's interface in that namespace ([`WORKLOAD_INTERFACE`]).
    pub interface: String,
    /// The interface's index in that namespace; the same for as long as the
    /// attachment lasts.
    pub index: u32,
    /// The workload's address, with the subnet's prefix (`/24`).
    pub address: Ipv4Net,
    /// Its default route: the network's gateway on the bridge.
    pub gateway: Ipv4Addr,
}

/// A VM's place on a network, as [`Networks::attach_tap`] left it. The guest
/// configures `address` and `gateway` itself (from its config drive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapAttachment {
    /// The tap device, inside the network's namespace.
    pub tap: String,
    /// The network's namespace, which the VM's QEMU runs in to open the tap.
    pub netns_path: PathBuf,
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// What a node reports about one of its networks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkStatus {
    pub names: Names,
    pub peers: Vec<PeerStatus>,
    /// Bytes received from and sent to all peers (what `nu_bytes` bills).
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The node's tenant networks, over a kernel boundary ([`Linux`] on a node).
pub struct Networks<S: Sys = Linux> {
    sys: S,
}

impl<S: Sys> Networks<S> {
    pub fn new(sys: S) -> Self {
        Networks { sys }
    }

    /// Creates the network `key` or brings it to `spec`: the local part
    /// ([`Networks::ensure_local`]), then the WireGuard device, its peers and the
    /// route. Safe to repeat; an update keeps the device (same index) and the
    /// namespace.
    pub fn ensure(&self, key: &str, spec: &NetworkSpec) -> Result<Names, NetworkError> {
        let names = self.ensure_local(key, spec)?;
        let step = |step| {
            let key = key.to_string();
            move |source: SysError| {
                if source.not_supported() {
                    NetworkError::NoWireGuard { key }
                } else {
                    NetworkError::Sys { key, step, source }
                }
            }
        };
        self.sys
            .ensure_wireguard(&names.netns, &names.wireguard)
            .map_err(step("create the WireGuard device"))?;
        self.sys
            .configure_wireguard(&names.netns, &names.wireguard, spec)
            .map_err(step("configure the WireGuard device"))?;
        Ok(names)
    }

    /// The part of [`Networks::ensure`] that needs no WireGuard: namespace, ruleset,
    /// bridge with the gateway, forwarding. The ruleset goes in before anything can
    /// pass, so there is never a moment with forwarding on and no rules.
    pub fn ensure_local(&self, key: &str, spec: &NetworkSpec) -> Result<Names, NetworkError> {
        // The engine validated the deployment; this keeps a bad spec from ever
        // reaching the kernel even if a caller did not.
        spec.check().map_err(|reason| NetworkError::BadSpec {
            key: key.to_string(),
            reason,
        })?;
        let names = Names::for_key(key);
        let step = |step| {
            let key = key.to_string();
            move |source| NetworkError::Sys { key, step, source }
        };
        let ns = &names.netns;
        if !self.sys.netns_exists(ns) {
            self.sys
                .create_netns(ns)
                .map_err(step("create the namespace"))?;
        }
        self.sys
            .apply_ruleset(ns, &ruleset::ruleset(&names, spec))
            .map_err(step("apply the nftables ruleset"))?;
        let gateway = cellos_ledger::network::Ipv4Net::new(spec.gateway(), 24).map_err(|e| {
            NetworkError::BadSpec {
                key: key.to_string(),
                reason: e.to_string(),
            }
        })?;
        self.sys
            .ensure_bridge(ns, &names.bridge, gateway)
            .map_err(step("set up the bridge"))?;
        self.sys
            .enable_forwarding(ns)
            .map_err(step("enable forwarding"))?;
        Ok(names)
    }

    /// Removes the network's device, bridge and namespace; succeeds if they are gone.
    pub fn remove(&self, key: &str) -> Result<(), NetworkError> {
        let names = Names::for_key(key);
        let step = |step| {
            let key = key.to_string();
            move |source| NetworkError::Sys { key, step, source }
        };
        if self.sys.netns_exists(&names.netns) {
            // Deleted explicitly: a namespace someone still holds open would keep
            // its devices (and the WireGuard port) alive.
            self.sys
                .delete_link(Some(&names.netns), &names.wireguard)
                .map_err(step("delete the WireGuard device"))?;
            self.sys
                .delete_link(Some(&names.netns), &names.bridge)
                .map_err(step("delete the bridge"))?;
        }
        // A crash between creating the device and moving it leaves it here.
        self.sys
            .delete_link(None, &names.wireguard)
            .map_err(step("delete a WireGuard device left in the host namespace"))?;
        self.sys
            .delete_netns(&names.netns)
            .map_err(step("delete the namespace"))
    }

    /// Puts workload `workload_key` on network `network_key` (whose spec is `spec`)
    /// at `ip`: a namespace of its own, bind-mounted like the network's, whose only
    /// interface besides `lo` is [`WORKLOAD_INTERFACE`] with `ip` in the subnet's
    /// prefix and the default route via the gateway; the other end of that veth is
    /// a port of the network's bridge, inside the network's namespace, so nothing of
    /// the workload's is in the host namespace.
    ///
    /// Converges: a repeat keeps the namespace and the interface (same index); a new
    /// `ip` replaces the old address; a workload moved to another network gets a
    /// new veth. The network must exist ([`Networks::ensure`]); the caller does not
    /// attach one workload twice at the same time.
    pub fn attach(
        &self,
        network_key: &str,
        spec: &NetworkSpec,
        workload_key: &str,
        ip: Ipv4Addr,
    ) -> Result<Attachment, NetworkError> {
        let (network, address) = self.placement(network_key, spec, workload_key, ip)?;
        let names = WorkloadNames::for_key(workload_key);
        if !self.sys.netns_exists(&names.netns) {
            self.sys
                .create_netns(&names.netns)
                .map_err(workload_step(workload_key, "create the namespace"))?;
        }
        let index = self
            .sys
            .ensure_veth(
                &network.netns,
                &network.bridge,
                &names.port,
                &names.netns,
                WORKLOAD_INTERFACE,
            )
            .map_err(workload_step(workload_key, "join the network's bridge"))?;
        self.sys
            .configure_interface(&names.netns, WORKLOAD_INTERFACE, address, spec.gateway())
            .map_err(workload_step(workload_key, "configure the interface"))?;
        Ok(Attachment {
            netns_path: self.sys.netns_path(&names.netns),
            names,
            interface: WORKLOAD_INTERFACE.to_string(),
            index,
            address,
            gateway: spec.gateway(),
        })
    }

    /// Removes workload `workload_key`'s veth and namespace; succeeds if they are
    /// gone.
    pub fn detach(&self, workload_key: &str) -> Result<(), NetworkError> {
        let names = WorkloadNames::for_key(workload_key);
        if self.sys.netns_exists(&names.netns) {
            // Deleted explicitly (its bridge port goes with it): a process still in
            // the namespace would keep the namespace, and so the veth, alive.
            self.sys
                .delete_link(Some(&names.netns), WORKLOAD_INTERFACE)
                .map_err(workload_step(workload_key, "delete the interface"))?;
        }
        self.sys
            .delete_netns(&names.netns)
            .map_err(workload_step(workload_key, "delete the namespace"))
    }

    /// What attaching workload `workload_key` to network `network_key` at `ip`
    /// needs checked first: a sound spec, a host address of the subnet, and the
    /// network made on this node. Returns the network's names and the address with
    /// the subnet's prefix.
    fn placement(
        &self,
        network_key: &str,
        spec: &NetworkSpec,
        workload_key: &str,
        ip: Ipv4Addr,
    ) -> Result<(Names, Ipv4Net), NetworkError> {
        spec.check().map_err(|reason| NetworkError::BadSpec {
            key: network_key.to_string(),
            reason,
        })?;
        let address = workload_address(spec, ip).map_err(|reason| NetworkError::BadAttachment {
            workload: workload_key.to_string(),
            reason,
        })?;
        let network = Names::for_key(network_key);
        if !self.sys.netns_exists(&network.netns) {
            return Err(NetworkError::NoNetwork {
                network: network_key.to_string(),
                workload: workload_key.to_string(),
            });
        }
        Ok((network, address))
    }

    /// Puts VM `workload_key` on network `network_key` at `ip`: a persistent tap
    /// device, a port of the network's bridge inside the network's namespace. The
    /// VM's QEMU opens it by name from inside that namespace, so nothing of the
    /// VM's is in the host namespace either. Converges like [`Networks::attach`].
    pub fn attach_tap(
        &self,
        network_key: &str,
        spec: &NetworkSpec,
        workload_key: &str,
        ip: Ipv4Addr,
    ) -> Result<TapAttachment, NetworkError> {
        let (network, address) = self.placement(network_key, spec, workload_key, ip)?;
        let names = WorkloadNames::for_key(workload_key);
        self.sys
            .ensure_tap(&network.netns, &network.bridge, &names.tap)
            .map_err(workload_step(workload_key, "join the network's bridge"))?;
        Ok(TapAttachment {
            tap: names.tap,
            netns_path: self.sys.netns_path(&network.netns),
            address,
            gateway: spec.gateway(),
        })
    }

    /// Removes VM `workload_key`'s tap from network `network_key`; succeeds if it
    /// (or the network) is gone.
    pub fn detach_tap(&self, network_key: &str, workload_key: &str) -> Result<(), NetworkError> {
        let network = Names::for_key(network_key);
        if !self.sys.netns_exists(&network.netns) {
            return Ok(());
        }
        let names = WorkloadNames::for_key(workload_key);
        self.sys
            .delete_link(Some(&network.netns), &names.tap)
            .map_err(workload_step(workload_key, "delete the tap"))
    }

    /// The peers of network `key` with their last handshake and byte counters.
    pub fn status(&self, key: &str) -> Result<NetworkStatus, NetworkError> {
        let names = Names::for_key(key);
        let peers = self
            .sys
            .wireguard_peers(&names.netns, &names.wireguard)
            .map_err(|source| NetworkError::Sys {
                key: key.to_string(),
                step: "read the WireGuard device",
                source,
            })?;
        let sum = |f: fn(&PeerStatus) -> u64| peers.iter().map(f).fold(0u64, u64::saturating_add);
        Ok(NetworkStatus {
            rx_bytes: sum(|p| p.rx_bytes),
            tx_bytes: sum(|p| p.tx_bytes),
            names,
            peers,
        })
    }
}

/// `ip` with the subnet's prefix, if it is a workload's address in the subnet: not
/// the network address, the gateway or the broadcast address.
fn workload_address(spec: &NetworkSpec, ip: Ipv4Addr) -> Result<Ipv4Net, String> {
    let subnet = spec.subnet;
    if !subnet.contains(&ip) {
        return Err(format!("{ip} is outside the subnet {subnet}"));
    }
    if [subnet.network(), spec.gateway(), subnet.broadcast()].contains(&ip) {
        return Err(format!(
            "{ip} is the network, gateway or broadcast address of {subnet}"
        ));
    }
    Ipv4Net::new(ip, subnet.prefix_len()).map_err(|e| e.to_string())
}

/// Wraps a kernel error of `step` of attaching or detaching `workload`.
fn workload_step<'a>(
    workload: &'a str,
    step: &'static str,
) -> impl FnOnce(SysError) -> NetworkError + 'a {
    move |source| NetworkError::Workload {
        workload: workload.to_string(),
        step,
        source,
    }
}

/// The public key that goes with a WireGuard private key (what peers list).
pub fn public_key(private: &cellos_ledger::network::WgSecret) -> WgKey {
    WgKey(wireguard_control::Key(*private.bytes()).get_public().0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellos_ledger::network::{Ipv4Net, NetworkPeer, WgSecret};
    use std::sync::Mutex;

    /// Records what was asked of the kernel; namespaces "exist" once created.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<String>>,
        namespaces: Mutex<Vec<String>>,
        no_wireguard: bool,
    }

    impl Fake {
        fn log(&self, s: String) {
            self.calls.lock().expect("lock").push(s);
        }
        fn calls(&self) -> Vec<String> {
            std::mem::take(&mut *self.calls.lock().expect("lock"))
        }
    }

    impl Sys for Fake {
        fn netns_path(&self, ns: &str) -> PathBuf {
            PathBuf::from("/run/netns").join(ns)
        }
        fn netns_exists(&self, ns: &str) -> bool {
            self.namespaces
                .lock()
                .expect("lock")
                .iter()
                .any(|n| n == ns)
        }
        fn create_netns(&self, ns: &str) -> Result<(), SysError> {
            self.namespaces.lock().expect("lock").push(ns.into());
            self.log(format!("create {ns}"));
            Ok(())
        }
        fn delete_netns(&self, ns: &str) -> Result<(), SysError> {
            self.namespaces.lock().expect("lock").retain(|n| n != ns);
            self.log(format!("delete {ns}"));
            Ok(())
        }
        fn ensure_bridge(&self, _: &str, br: &str, gw: Ipv4Net) -> Result<(), SysError> {
            self.log(format!("bridge {br} {gw}"));
            Ok(())
        }
        fn enable_forwarding(&self, _: &str) -> Result<(), SysError> {
            self.log("forwarding".into());
            Ok(())
        }
        fn apply_ruleset(&self, _: &str, _: &str) -> Result<(), SysError> {
            self.log("ruleset".into());
            Ok(())
        }
        fn ensure_wireguard(&self, _: &str, dev: &str) -> Result<u32, SysError> {
            if self.no_wireguard {
                return Err(SysError::Io {
                    what: "create".into(),
                    source: std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
                });
            }
            self.log(format!("wireguard {dev}"));
            Ok(7)
        }
        fn configure_wireguard(&self, _: &str, dev: &str, s: &NetworkSpec) -> Result<(), SysError> {
            self.log(format!("configure {dev} peers={}", s.peers.len()));
            Ok(())
        }
        fn wireguard_peers(&self, _: &str, _: &str) -> Result<Vec<PeerStatus>, SysError> {
            let peer = |b, rx, tx| PeerStatus {
                public_key: WgKey([b; 32]),
                endpoint: None,
                last_handshake: None,
                rx_bytes: rx,
                tx_bytes: tx,
            };
            Ok(vec![peer(2, 100, 10), peer(3, 5, u64::MAX)])
        }
        fn delete_link(&self, ns: Option<&str>, name: &str) -> Result<(), SysError> {
            self.log(format!("delete {name} in {}", ns.unwrap_or("host")));
            Ok(())
        }
        fn ensure_veth(
            &self,
            ns: &str,
            br: &str,
            port: &str,
            workload_ns: &str,
            dev: &str,
        ) -> Result<u32, SysError> {
            self.log(format!(
                "veth {port} on {br} in {ns}, {dev} in {workload_ns}"
            ));
            Ok(2)
        }
        fn configure_interface(
            &self,
            ns: &str,
            dev: &str,
            address: Ipv4Net,
            gateway: Ipv4Addr,
        ) -> Result<(), SysError> {
            self.log(format!("address {address} via {gateway} on {dev} in {ns}"));
            Ok(())
        }
        fn ensure_tap(&self, ns: &str, br: &str, tap: &str) -> Result<u32, SysError> {
            self.log(format!("tap {tap} on {br} in {ns}"));
            Ok(3)
        }
    }

    fn spec() -> NetworkSpec {
        NetworkSpec {
            ip_range: "10.20.0.0/16".parse().expect("net"),
            subnet: "10.20.3.0/24".parse().expect("net"),
            private_key: WgSecret(WgKey([1; 32])),
            listen_port: 51820,
            peers: vec![NetworkPeer {
                public_key: WgKey([2; 32]),
                endpoint: None,
                allowed_subnets: vec!["10.20.5.0/24".parse().expect("net")],
            }],
        }
    }

    #[test]
    fn ensure_puts_the_rules_in_first_and_creates_the_namespace_once() {
        let n = Networks::new(Fake::default());
        let names = n.ensure("c1-net", &spec()).expect("ensure");
        let (ns, br, wg) = (&names.netns, &names.bridge, &names.wireguard);
        assert_eq!(
            n.sys.calls(),
            [
                format!("create {ns}"),
                "ruleset".into(),
                format!("bridge {br} 10.20.3.1/24"),
                "forwarding".into(),
                format!("wireguard {wg}"),
                format!("configure {wg} peers=1"),
            ]
        );
        let mut fewer = spec();
        fewer.peers.clear();
        n.ensure("c1-net", &fewer).expect("again");
        let again = n.sys.calls();
        assert!(!again.iter().any(|c| c.starts_with("create")), "{again:?}");
        assert_eq!(
            again.last().map(String::as_str),
            Some(format!("configure {wg} peers=0").as_str())
        );
    }

    #[test]
    fn remove_takes_down_device_bridge_and_namespace() {
        let n = Networks::new(Fake::default());
        let names = n.ensure("c1-net", &spec()).expect("ensure");
        n.sys.calls();
        n.remove("c1-net").expect("remove");
        let (ns, br, wg) = (&names.netns, &names.bridge, &names.wireguard);
        assert_eq!(
            n.sys.calls(),
            [
                format!("delete {wg} in {ns}"),
                format!("delete {br} in {ns}"),
                format!("delete {wg} in host"),
                format!("delete {ns}"),
            ]
        );
        n.remove("c1-net").expect("remove again");
        assert_eq!(n.sys.calls().len(), 2, "only the host-side checks");
    }

    #[test]
    fn no_wireguard_and_bad_specs_say_so() {
        let n = Networks::new(Fake {
            no_wireguard: true,
            ..Default::default()
        });
        let err = n.ensure("c1-net", &spec()).expect_err("no wireguard");
        assert!(matches!(err, NetworkError::NoWireGuard { .. }), "{err}");
        let mut bad = spec();
        bad.subnet = "10.99.3.0/24".parse().expect("net");
        let err = n.ensure("c2-net", &bad).expect_err("bad");
        assert!(err.to_string().contains("outside ip_range"), "{err}");
        assert!(!n.sys.netns_exists(&Names::for_key("c2-net").netns));
    }

    #[test]
    fn attach_joins_the_bridge_then_addresses_the_interface() {
        let n = Networks::new(Fake::default());
        let net = n.ensure_local("c1-net", &spec()).expect("network");
        n.sys.calls();
        let ip = "10.20.3.7".parse().expect("ip");
        let a = n.attach("c1-net", &spec(), "c1-web", ip).expect("attach");
        let w = WorkloadNames::for_key("c1-web");
        assert_eq!(
            a,
            Attachment {
                netns_path: format!("/run/netns/{}", w.netns).into(),
                names: w.clone(),
                interface: "eth0".into(),
                index: 2,
                address: "10.20.3.7/24".parse().expect("net"),
                gateway: "10.20.3.1".parse().expect("ip"),
            }
        );
        let (br, ns) = (&net.bridge, &net.netns);
        assert_eq!(
            n.sys.calls(),
            [
                format!("create {}", w.netns),
                format!("veth {} on {br} in {ns}, eth0 in {}", w.port, w.netns),
                format!("address 10.20.3.7/24 via 10.20.3.1 on eth0 in {}", w.netns),
            ]
        );
        // Again: the namespace is not made twice; the rest converges.
        n.attach("c1-net", &spec(), "c1-web", ip).expect("again");
        let again = n.sys.calls();
        assert!(!again.iter().any(|c| c.starts_with("create")), "{again:?}");
        assert_eq!(again.len(), 2, "{again:?}");
    }

    #[test]
    fn attach_refuses_addresses_not_a_workload_s_and_missing_networks() {
        let n = Networks::new(Fake::default());
        n.ensure_local("c1-net", &spec()).expect("network");
        n.sys.calls();
        for ip in ["10.20.4.7", "10.20.3.0", "10.20.3.1", "10.20.3.255"] {
            let err = n
                .attach("c1-net", &spec(), "c1-web", ip.parse().expect("ip"))
                .expect_err(ip);
            assert!(
                matches!(&err, NetworkError::BadAttachment { workload, .. } if workload == "c1-web"),
                "{ip}: {err}"
            );
            assert!(err.to_string().contains(ip), "{err}");
        }
        let err = n
            .attach(
                "c2-net",
                &spec(),
                "c1-web",
                "10.20.3.7".parse().expect("ip"),
            )
            .expect_err("no network");
        assert_eq!(
            err.to_string(),
            "workload c1-web: network c2-net is not on this node"
        );
        assert!(n.sys.calls().is_empty(), "nothing was made");
    }

    #[test]
    fn detach_deletes_the_interface_then_the_namespace() {
        let n = Networks::new(Fake::default());
        n.ensure_local("c1-net", &spec()).expect("network");
        n.attach(
            "c1-net",
            &spec(),
            "c1-web",
            "10.20.3.7".parse().expect("ip"),
        )
        .expect("attach");
        n.sys.calls();
        n.detach("c1-web").expect("detach");
        let ns = WorkloadNames::for_key("c1-web").netns;
        assert_eq!(
            n.sys.calls(),
            [format!("delete eth0 in {ns}"), format!("delete {ns}")]
        );
        n.detach("c1-web").expect("detach again");
        assert_eq!(n.sys.calls(), [format!("delete {ns}")]);
    }

    #[test]
    fn status_sums_the_peers_without_wrapping() {
        let n = Networks::new(Fake::default());
        let s = n.status("c1-net").expect("status");
        assert_eq!((s.rx_bytes, s.tx_bytes), (105, u64::MAX));
        assert_eq!(s.peers.len(), 2);
    }

    #[test]
    fn public_key_matches_wireguard() {
        // RFC 7748 §6.1: Alice's private key and public key.
        let private = hex_key("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let public = hex_key("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        assert_eq!(public_key(&WgSecret(WgKey(private))), WgKey(public));
    }

    fn hex_key(s: &str) -> [u8; 32] {
        let mut k = [0; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
        }
        k
    }
}
