//! The crate's one boundary with the kernel: namespaces, links (bridges, veth pairs),
//! addresses and routes over rtnetlink, the WireGuard device over its generic-netlink family
//! (wireguard-control), and the ruleset through `nft -f -`.
//!
//! Work inside a namespace runs on a thread of its own that `setns`es into it and
//! ends afterwards, so no other thread of cellosd ever changes namespace and nothing
//! forks `ip netns exec`. Every netlink socket is opened on that thread, so it
//! speaks to that namespace. Each step is idempotent: it finds what exists and
//! creates only what is missing.

use std::collections::BTreeSet;
use std::fs::File;
use std::future::Future;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use cellos_ledger::network::{Ipv4Net, NetworkSpec, WgKey};
use futures::TryStreamExt as _;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope,
};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkWireguard,
    RouteMessageBuilder,
};
use wireguard_control::{Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};

/// What one peer's tunnel has done, from the WireGuard device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub public_key: WgKey,
    pub endpoint: Option<SocketAddr>,
    /// When the last handshake completed; `None` if none has yet.
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Netlink {
        what: String,
        // Boxed: an rtnetlink error carries a whole netlink message.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("nft refused the ruleset in namespace {ns}: {stderr}")]
    Nft { ns: String, stderr: String },
    #[error("the thread working in a namespace panicked")]
    Panicked,
}

impl SysError {
    /// The kernel does not know the link type (no `wireguard` module).
    pub fn not_supported(&self) -> bool {
        let code = match self {
            SysError::Netlink { source, .. } => match source.as_ref() {
                rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get()),
                _ => None,
            },
            SysError::Io { source, .. } => source.raw_os_error().map(|c| -c),
            _ => None,
        };
        code == Some(-libc::EOPNOTSUPP)
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SysError {
    let what = what.into();
    move |source| SysError::Io { what, source }
}

fn errno(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> SysError {
    let f = io(what);
    move |e| f(e.into())
}

/// What the crate asks of the kernel. [`Linux`] is the real thing; unit tests put a
/// recording fake here.
pub trait Sys: Send + Sync {
    /// Where namespace `ns` is bind-mounted (what a container runtime joins).
    fn netns_path(&self, ns: &str) -> PathBuf;
    fn netns_exists(&self, ns: &str) -> bool;
    /// Creates the namespace and bind-mounts it under the namespace directory, so it
    /// outlives cellosd.
    fn create_netns(&self, ns: &str) -> Result<(), SysError>;
    /// Unmounts and removes the namespace's mount point.
    fn delete_netns(&self, ns: &str) -> Result<(), SysError>;
    /// Inside `ns`: `lo` up, and the bridge up with `gateway` on it.
    fn ensure_bridge(&self, ns: &str, bridge: &str, gateway: Ipv4Net) -> Result<(), SysError>;
    /// `net.ipv4.ip_forward = 1` inside `ns` only.
    fn enable_forwarding(&self, ns: &str) -> Result<(), SysError>;
    /// Replaces the namespace's nftables table with `ruleset`.
    fn apply_ruleset(&self, ns: &str, ruleset: &str) -> Result<(), SysError>;
    /// Makes sure the WireGuard device `dev` is inside `ns`: created in the host
    /// namespace (its UDP socket stays on the uplink) and moved in. Returns its index.
    fn ensure_wireguard(&self, ns: &str, dev: &str) -> Result<u32, SysError>;
    /// Inside `ns`: the device's key, port and peers as `spec` says (peers that left
    /// are removed, the others updated in place), the node's address on it, up, and
    /// the route for the whole range through it.
    fn configure_wireguard(&self, ns: &str, dev: &str, spec: &NetworkSpec) -> Result<(), SysError>;
    /// The device's peers and their counters.
    fn wireguard_peers(&self, ns: &str, dev: &str) -> Result<Vec<PeerStatus>, SysError>;
    /// Deletes link `name` inside `ns`, or in the host namespace for `None`; succeeds
    /// if it is not there.
    fn delete_link(&self, ns: Option<&str>, name: &str) -> Result<(), SysError>;
    /// Makes sure a veth pair joins two namespaces: `port` inside `ns`, a port of
    /// `bridge` and up, and its peer `dev` inside `workload_ns`. A pair whose ends
    /// are not each other's (one end missing, or left from another network) is
    /// replaced; a matching one is kept. Returns the index of `dev`.
    fn ensure_veth(
        &self,
        ns: &str,
        bridge: &str,
        port: &str,
        workload_ns: &str,
        dev: &str,
    ) -> Result<u32, SysError>;
    /// Makes sure a persistent tap device `tap` exists inside `ns`, a port of
    /// `bridge` and up, for a VM's QEMU to open by name from inside `ns`. Returns
    /// its index.
    fn ensure_tap(&self, ns: &str, bridge: &str, tap: &str) -> Result<u32, SysError>;
    /// Inside `ns`: `lo` up, `dev` up with `address` and no other IPv4 address, and
    /// the default route via `gateway`.
    fn configure_interface(
        &self,
        ns: &str,
        dev: &str,
        address: Ipv4Net,
        gateway: Ipv4Addr,
    ) -> Result<(), SysError>;
}

/// The running kernel.
pub struct Linux {
    /// Where namespaces are bind-mounted (`ip netns` looks there too).
    pub netns_dir: PathBuf,
    /// Debian's `nft`.
    pub nft: PathBuf,
}

/// Where `ip netns` and this crate keep namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Where Debian's `nftables` package puts `nft` (the image carries it there too).
pub const NFT: &str = "/usr/sbin/nft";

impl Default for Linux {
    fn default() -> Self {
        Linux {
            netns_dir: NETNS_DIR.into(),
            nft: NFT.into(),
        }
    }
}

/// Runs `f` on a thread of its own and waits for it.
fn on_thread<T: Send>(f: impl FnOnce() -> Result<T, SysError> + Send) -> Result<T, SysError> {
    std::thread::scope(|s| s.spawn(f).join().unwrap_or(Err(SysError::Panicked)))
}

/// Runs rtnetlink requests on the current thread (and so in its namespace).
fn netlink<T, Fut>(what: &str, f: impl FnOnce(Handle) -> Fut) -> Result<T, SysError>
where
    Fut: Future<Output = Result<T, rtnetlink::Error>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(io("start a netlink runtime"))?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(io("open rtnetlink"))?;
        tokio::spawn(conn);
        f(handle).await.map_err(|source| SysError::Netlink {
            what: what.to_string(),
            source: Box::new(source),
        })
    })
}

async fn find_link(h: &Handle, name: &str) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Err(rtnetlink::Error::NetlinkError(e))
            if e.code.map(|c| c.get()) == Some(-libc::ENODEV) =>
        {
            Ok(None)
        }
        found => found,
    }
}

async fn link_index(h: &Handle, name: &str) -> Result<Option<u32>, rtnetlink::Error> {
    Ok(find_link(h, name).await?.map(|l| l.header.index))
}

/// One end of a veth pair: its index, and its peer's index in the peer's namespace.
#[derive(Clone, Copy)]
struct VethEnd {
    index: u32,
    peer: Option<u32>,
}

impl VethEnd {
    fn pairs_with(self, other: VethEnd) -> bool {
        self.peer == Some(other.index) && other.peer == Some(self.index)
    }
}

async fn veth_end(h: &Handle, name: &str) -> Result<Option<VethEnd>, rtnetlink::Error> {
    Ok(find_link(h, name).await?.map(|l| VethEnd {
        index: l.header.index,
        peer: l.attributes.iter().find_map(|a| match a {
            LinkAttribute::Link(i) => Some(*i),
            _ => None,
        }),
    }))
}

async fn existing(h: &Handle, name: &str) -> Result<u32, rtnetlink::Error> {
    link_index(h, name)
        .await?
        .ok_or(rtnetlink::Error::RequestFailed)
}

/// The index of link `name`, created from `message` if it is not there.
async fn ensure_link(
    h: &Handle,
    name: &str,
    message: rtnetlink::packet_route::link::LinkMessage,
) -> Result<u32, rtnetlink::Error> {
    if link_index(h, name).await?.is_none() {
        h.link().add(message).execute().await?;
    }
    existing(h, name).await
}

async fn set_up(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
}

/// Gives link `index` the IPv4 address `addr/prefix` and no other: an update that
/// moves a network to another subnet must not leave the old gateway answering, nor
/// a workload given another address keep its old one.
///
/// The stale addresses go first: a new address in the subnet of an old one is its
/// secondary, and deleting a primary deletes its secondaries too (the kernel's
/// default without `promote_secondaries`).
async fn only_address(
    h: &Handle,
    index: u32,
    addr: Ipv4Addr,
    prefix: u8,
) -> Result<(), rtnetlink::Error> {
    let current: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await?;
    for m in current {
        let stale = m.attributes.iter().any(|a| {
            matches!(a, AddressAttribute::Address(IpAddr::V4(ip))
                if *ip != addr || m.header.prefix_len != prefix)
        });
        if stale {
            h.address().del(m).execute().await?;
        }
    }
    h.address()
        .add(index, IpAddr::V4(addr), prefix)
        .replace()
        .execute()
        .await
}

/// Removes every route of the main table through link `index` except the one to
/// `range`: an update to another range must not keep routing the old one into the
/// tunnel. (The kernel's own routes for the link's address live in the local table.)
async fn only_route(h: &Handle, index: u32, range: Ipv4Net) -> Result<(), rtnetlink::Error> {
    let routes: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await?;
    for r in routes {
        let through = r
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
        let to_range = r.header.destination_prefix_length == range.prefix_len()
            && r.attributes.iter().any(|a| {
                matches!(a, RouteAttribute::Destination(RouteAddress::Inet(ip))
                    if *ip == range.network())
            });
        if through && r.header.table == RouteHeader::RT_TABLE_MAIN && !to_range {
            h.route().del(r).execute().await?;
        }
    }
    Ok(())
}

fn wg_name(dev: &str) -> Result<InterfaceName, SysError> {
    dev.parse::<InterfaceName>()
        .map_err(|e| io(format!("name {dev}"))(e.into()))
}

fn is_netns(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

impl Linux {
    /// Runs `f` on a thread that has entered namespace `ns`.
    fn in_netns<T: Send>(
        &self,
        ns: &str,
        f: impl FnOnce() -> Result<T, SysError> + Send,
    ) -> Result<T, SysError> {
        let path = self.netns_path(ns);
        on_thread(move || {
            let fd = File::open(&path).map_err(io(format!("open namespace {}", path.display())))?;
            setns(&fd, CloneFlags::CLONE_NEWNET)
                .map_err(errno(format!("enter namespace {}", path.display())))?;
            f()
        })
    }

    /// The ends named `port` inside `ns` and `dev` inside `workload_ns`.
    fn veth_ends(
        &self,
        ns: &str,
        port: &str,
        workload_ns: &str,
        dev: &str,
    ) -> Result<(Option<VethEnd>, Option<VethEnd>), SysError> {
        let end = |ns: &str, name: &str| {
            self.in_netns(ns, || {
                netlink(&format!("look for {name} in {ns}"), |h| async move {
                    veth_end(&h, name).await
                })
            })
        };
        Ok((end(ns, port)?, end(workload_ns, dev)?))
    }
}

impl Sys for Linux {
    fn netns_path(&self, ns: &str) -> PathBuf {
        self.netns_dir.join(ns)
    }

    fn netns_exists(&self, ns: &str) -> bool {
        is_netns(&self.netns_path(ns))
    }

    fn create_netns(&self, ns: &str) -> Result<(), SysError> {
        let path = self.netns_path(ns);
        if is_netns(&path) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.netns_dir)
            .map_err(io(format!("create {}", self.netns_dir.display())))?;
        File::create(&path).map_err(io(format!("create {}", path.display())))?;
        let made = on_thread(|| {
            unshare(CloneFlags::CLONE_NEWNET).map_err(errno("create a network namespace"))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(errno(format!(
                "bind-mount the namespace on {}",
                path.display()
            )))
        });
        if made.is_err() {
            // Best effort: the error that matters is the one returned.
            let _ = std::fs::remove_file(&path);
        }
        made
    }

    fn delete_netns(&self, ns: &str) -> Result<(), SysError> {
        let path = self.netns_path(ns);
        if is_netns(&path) {
            umount2(&path, MntFlags::MNT_DETACH)
                .map_err(errno(format!("unmount {}", path.display())))?;
        }
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io(format!("remove {}", path.display()))(e))
            }
            _ => Ok(()),
        }
    }

    fn ensure_bridge(&self, ns: &str, bridge: &str, gateway: Ipv4Net) -> Result<(), SysError> {
        self.in_netns(ns, || {
            netlink(&format!("set up bridge {bridge} in {ns}"), |h| async move {
                set_up(&h, existing(&h, "lo").await?).await?;
                let index = ensure_link(&h, bridge, LinkBridge::new(bridge).build()).await?;
                only_address(&h, index, gateway.addr(), gateway.prefix_len()).await?;
                set_up(&h, index).await
            })
        })
    }

    fn enable_forwarding(&self, ns: &str) -> Result<(), SysError> {
        self.in_netns(ns, || {
            // /proc/sys/net is the namespace of the thread that opens it.
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                .map_err(io(format!("enable forwarding in {ns}")))
        })
    }

    fn apply_ruleset(&self, ns: &str, ruleset: &str) -> Result<(), SysError> {
        let nft = &self.nft;
        self.in_netns(ns, || {
            // The child inherits this thread's namespace.
            let mut child = Command::new(nft)
                .args(["-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(io(format!("run {}", nft.display())))?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin
                    .write_all(ruleset.as_bytes())
                    .map_err(io(format!("write the ruleset to {}", nft.display())))?;
            }
            let out = child
                .wait_with_output()
                .map_err(io(format!("wait for {}", nft.display())))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(SysError::Nft {
                    ns: ns.to_string(),
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                })
            }
        })
    }

    fn ensure_wireguard(&self, ns: &str, dev: &str) -> Result<u32, SysError> {
        let find = || {
            self.in_netns(ns, || {
                netlink(&format!("look for {dev} in {ns}"), |h| async move {
                    link_index(&h, dev).await
                })
            })
        };
        if let Some(index) = find()? {
            return Ok(index);
        }
        let path = self.netns_path(ns);
        let target = File::open(&path).map_err(io(format!("open namespace {}", path.display())))?;
        on_thread(|| {
            netlink(
                &format!("create {dev} and move it into {ns}"),
                |h| async move {
                    // A device left here by a crash between create and move is reused.
                    let index = ensure_link(&h, dev, LinkWireguard::new(dev).build()).await?;
                    h.link()
                        .set(
                            LinkUnspec::new_with_index(index)
                                .setns_by_fd(target.as_raw_fd())
                                .build(),
                        )
                        .execute()
                        .await
                },
            )
        })?;
        find()?.ok_or_else(|| SysError::Netlink {
            what: format!("{dev} is not in {ns} after the move"),
            source: Box::new(rtnetlink::Error::RequestFailed),
        })
    }

    fn configure_wireguard(&self, ns: &str, dev: &str, spec: &NetworkSpec) -> Result<(), SysError> {
        self.in_netns(ns, || {
            let iface = wg_name(dev)?;
            let what = format!("configure WireGuard on {dev} in {ns}");
            let current = Device::get(&iface, Backend::Kernel).map_err(io(what.clone()))?;
            let wanted: BTreeSet<[u8; 32]> = spec.peers.iter().map(|p| p.public_key.0).collect();
            let mut update = DeviceUpdate::new()
                .set_private_key(Key(*spec.private_key.bytes()))
                .set_listen_port(spec.listen_port);
            // Peers that left are removed one by one; the others are updated in
            // place, so their sessions and counters survive an update.
            for p in &current.peers {
                if !wanted.contains(&p.config.public_key.0) {
                    update = update.remove_peer_by_key(&p.config.public_key);
                }
            }
            for p in &spec.peers {
                let mut peer = PeerConfigBuilder::new(&Key(p.public_key.0)).replace_allowed_ips();
                for n in &p.allowed_subnets {
                    peer = peer.add_allowed_ip(IpAddr::V4(n.network()), n.prefix_len());
                }
                if let Some(e) = p.endpoint {
                    // Keepalives start the handshake at once and keep NAT state.
                    peer = peer.set_endpoint(e).set_persistent_keepalive_interval(25);
                }
                update = update.add_peer(peer);
            }
            update.apply(&iface, Backend::Kernel).map_err(io(what))?;
            let gateway = spec.gateway();
            let range = spec.ip_range;
            netlink(
                &format!("address and route {dev} in {ns}"),
                |h| async move {
                    let index = existing(&h, dev).await?;
                    only_address(&h, index, gateway, 32).await?;
                    set_up(&h, index).await?;
                    let route = RouteMessageBuilder::<Ipv4Addr>::new()
                        .destination_prefix(range.network(), range.prefix_len())
                        .output_interface(index)
                        .pref_source(gateway)
                        .scope(RouteScope::Link)
                        .build();
                    h.route().add(route).replace().execute().await?;
                    only_route(&h, index, range).await
                },
            )
        })
    }

    fn wireguard_peers(&self, ns: &str, dev: &str) -> Result<Vec<PeerStatus>, SysError> {
        self.in_netns(ns, || {
            let iface = wg_name(dev)?;
            let d = Device::get(&iface, Backend::Kernel)
                .map_err(io(format!("read WireGuard device {dev} in {ns}")))?;
            Ok(d.peers
                .into_iter()
                .map(|p| PeerStatus {
                    public_key: WgKey(p.config.public_key.0),
                    endpoint: p.config.endpoint,
                    last_handshake: p.stats.last_handshake_time,
                    rx_bytes: p.stats.rx_bytes,
                    tx_bytes: p.stats.tx_bytes,
                })
                .collect())
        })
    }

    fn delete_link(&self, ns: Option<&str>, name: &str) -> Result<(), SysError> {
        let what = format!("delete {name} in {}", ns.unwrap_or("the host namespace"));
        let delete = || {
            netlink(&what, |h| async move {
                match link_index(&h, name).await? {
                    Some(index) => h.link().del(index).execute().await,
                    None => Ok(()),
                }
            })
        };
        match ns {
            Some(ns) => self.in_netns(ns, delete),
            None => on_thread(delete),
        }
    }

    fn ensure_veth(
        &self,
        ns: &str,
        bridge: &str,
        port: &str,
        workload_ns: &str,
        dev: &str,
    ) -> Result<u32, SysError> {
        let paired = match self.veth_ends(ns, port, workload_ns, dev)? {
            (Some(outer), Some(inner)) => outer.pairs_with(inner),
            _ => false,
        };
        if !paired {
            // Deleting one end of a veth deletes the other, wherever it is.
            self.delete_link(Some(workload_ns), dev)?;
            self.delete_link(Some(ns), port)?;
            let path = self.netns_path(workload_ns);
            let target =
                File::open(&path).map_err(io(format!("open namespace {}", path.display())))?;
            // One request makes both ends, the peer already in the workload's
            // namespace under its final name: a crash leaves the whole pair or none.
            let peer = LinkUnspec::new_with_name(dev)
                .setns_by_fd(target.as_raw_fd())
                .build();
            let pair = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
                .name(port.to_string())
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build();
            self.in_netns(ns, || {
                netlink(
                    &format!("create {port} in {ns} with its peer {dev} in {workload_ns}"),
                    |h| async move { h.link().add(pair).execute().await },
                )
            })?;
        }
        self.in_netns(ns, || join_bridge(ns, bridge, port))?;
        match self.veth_ends(ns, port, workload_ns, dev)? {
            (Some(outer), Some(inner)) if outer.pairs_with(inner) => Ok(inner.index),
            _ => Err(SysError::Netlink {
                what: format!("{port} in {ns} and {dev} in {workload_ns} are not a pair"),
                source: Box::new(rtnetlink::Error::RequestFailed),
            }),
        }
    }

    fn ensure_tap(&self, ns: &str, bridge: &str, tap: &str) -> Result<u32, SysError> {
        self.in_netns(ns, || {
            make_tap(tap)?;
            join_bridge(ns, bridge, tap)
        })
    }

    fn configure_interface(
        &self,
        ns: &str,
        dev: &str,
        address: Ipv4Net,
        gateway: Ipv4Addr,
    ) -> Result<(), SysError> {
        self.in_netns(ns, || {
            netlink(&format!("configure {dev} in {ns}"), |h| async move {
                set_up(&h, existing(&h, "lo").await?).await?;
                let index = existing(&h, dev).await?;
                only_address(&h, index, address.addr(), address.prefix_len()).await?;
                set_up(&h, index).await?;
                let route = RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(gateway)
                    .output_interface(index)
                    .build();
                // Replace: the one default route of the namespace.
                h.route().add(route).replace().execute().await
            })
        })
    }
}

/// In the current namespace (`ns`, for messages): link `port` a port of `bridge`, and
/// up. Returns its index.
fn join_bridge(ns: &str, bridge: &str, port: &str) -> Result<u32, SysError> {
    netlink(&format!("put {port} on {bridge} in {ns}"), |h| async move {
        let bridge = existing(&h, bridge).await?;
        let index = existing(&h, port).await?;
        h.link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await?;
        Ok(index)
    })
}

/// Creates the persistent tap device `name` in the current namespace, or finds it:
/// `TUNSETIFF` on `/dev/net/tun` attaches to an existing device of that name, and
/// `TUNSETPERSIST` keeps it after the descriptor closes. With `IFF_VNET_HDR`, as
/// QEMU opens it for virtio-net offloads.
fn make_tap(name: &str) -> Result<(), SysError> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
    let tun = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(io("open /dev/net/tun"))?;
    // SAFETY: an all-zero ifreq is a valid value of the plain C struct.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(SysError::Io {
            what: format!("tap name {name:?} is too long"),
            source: std::io::ErrorKind::InvalidInput.into(),
        });
    }
    for (d, b) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = b as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    let fd = tun.as_raw_fd();
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is, for the lifetime
    // of the call; `fd` is open.
    if unsafe { libc::ioctl(fd, TUNSETIFF, &mut req) } < 0 {
        return Err(io(format!("create tap {name}"))(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: TUNSETPERSIST takes an integer argument by value; `fd` is open.
    if unsafe { libc::ioctl(fd, TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(io(format!("make tap {name} persistent"))(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Whether this kernel can create WireGuard devices: tries, in a scratch namespace
/// that ends with the thread, so nothing is left behind.
pub fn wireguard_available() -> Result<bool, SysError> {
    on_thread(|| {
        unshare(CloneFlags::CLONE_NEWNET).map_err(errno("create a scratch namespace"))?;
        let made = netlink("create a WireGuard device", |h| async move {
            h.link()
                .add(LinkWireguard::new("wgprobe").build())
                .execute()
                .await
        });
        match made {
            Ok(()) => Ok(true),
            Err(e) if e.not_supported() => Ok(false),
            Err(e) => Err(e),
        }
    })
}
