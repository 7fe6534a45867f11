//! The command line: every subcommand and flag of `cellos`, as clap types.
//!
//! Kept apart from `main` and from the code that runs each command, so the
//! modules that act on the arguments depend on this one and never on each other.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{qemu, store, units};

/// Default ledger address, for `serve` and for every client command.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8645";

#[derive(Parser)]
#[command(
    name = "cellos",
    version,
    about = "cellos: a stateless node OS and its ledger",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Clone)]
pub struct Global {
    /// Ledger URL for client commands.
    #[arg(
        long,
        global = true,
        env = "CELLOS_LEDGER",
        default_value = "http://127.0.0.1:8645"
    )]
    pub url: String,
    /// Key file (ed25519 seed as hex, mode 0600). Default: ~/.config/cellos/key.
    #[arg(long, global = true, env = "CELLOS_KEY")]
    pub key: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for an https:// ledger, besides the built-in roots.
    #[arg(long, global = true, env = "CELLOS_CA")]
    pub ca: Option<PathBuf>,
    /// Print JSON instead of text meant for people.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run or verify a ledger.
    #[command(subcommand)]
    Ledger(LedgerCmd),
    /// Create or show the key in --key.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Accounts on the ledger.
    #[command(subcommand)]
    Account(AccountCmd),
    /// Farms: create, approve nodes, enrollment tokens, public IPs.
    #[command(subcommand)]
    Farm(FarmCmd),
    /// Nodes registered on the ledger.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Contracts: capacity reserved on a node for a deployment.
    #[command(subcommand)]
    Contract(ContractCmd),
    /// Deploy a signed deployment on a node: contract, sealed body, wait, results.
    Deploy {
        /// Deployment file (TOML or JSON).
        file: PathBuf,
        #[arg(long)]
        node: u32,
        /// Escrow deposit (default: 24 hours at the farm's price).
        #[arg(long)]
        deposit: Option<u64>,
        /// Seconds to wait for the node.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Deployments: hash, show, update, cancel.
    #[command(subcommand)]
    Deployment(DeploymentCmd),
    /// What a container printed, from its node (a request signed by --key, the
    /// deployment's owner).
    Logs {
        contract: u64,
        /// The container workload's name.
        workload: String,
        /// Keep printing new output until Ctrl-C.
        #[arg(long, short)]
        follow: bool,
        /// Node API base URL (default: the node's address on the ledger, port 8646).
        #[arg(long)]
        api: Option<String>,
    },
    /// Tenant networks: WireGuard overlays across nodes.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Build node images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Boot node images in QEMU.
    #[command(subcommand)]
    Qemu(QemuCmd),
    /// Benchmarks that print numbers.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Objects erasure-coded across shard servers (store.toml).
    #[command(subcommand)]
    Store(store::StoreCmd),
    /// Start an embedded ledger, create a farm, build the image, boot a node in QEMU
    /// and show it registered.
    Demo {
        /// Where the embedded ledger listens.
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Keep the ledger's data and the image here instead of a temporary directory.
        #[arg(long)]
        data: Option<PathBuf>,
        #[command(flatten)]
        vm: qemu::VmArgs,
        /// Stop after the node registered instead of waiting for Ctrl-C.
        #[arg(long)]
        once: bool,
    },
}

#[derive(Subcommand)]
pub enum DeploymentCmd {
    /// Print the hash a contract names for this deployment (owner: --key).
    Hash { file: PathBuf },
    /// Show a deployment's contract and the node's results (opened with --key).
    Show { contract: u64 },
    /// The node's own view of a deployment (phases and results, never secrets), from
    /// its API with a request signed by --key, the deployment's owner.
    Status {
        contract: u64,
        /// Node API base URL (default: the node's address on the ledger, port 8646).
        #[arg(long)]
        api: Option<String>,
    },
    /// Replace a contract's deployment; the node applies only the difference.
    Update {
        contract: u64,
        file: PathBuf,
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Cancel: the node removes the workloads and their data; the rest of the escrow
    /// comes back.
    Cancel { contract: u64 },
}

#[derive(Subcommand)]
pub enum NetworkCmd {
    /// Write one deployment file per node for a network across --nodes: a /24 of
    /// --range, a WireGuard key pair and the full peer mesh each (endpoints from the
    /// nodes' ledger records). Then `cellos deploy FILE --node N` for each.
    Plan {
        /// The nodes, e.g. 3,5,8 (node N gets the Nth /24 of the range).
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<u32>,
        /// The network's IPv4 /16.
        #[arg(long)]
        range: cellos_ledger::network::Ipv4Net,
        /// The network's name (the workload's name; containers and VMs attach by it).
        #[arg(long, default_value = "net")]
        name: String,
        /// The UDP port WireGuard listens on, on every node.
        #[arg(long, default_value_t = 51820)]
        port: u16,
        /// Take each node's endpoint from this interface's address (default: the
        /// first IPv4 address the node lists).
        #[arg(long)]
        interface: Option<String>,
        /// Where the files go (one per node, mode 0600: they hold private keys).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Replace files of an earlier plan (every node gets new keys).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Write vmlinuz, initramfs.cpio.zst, boot.ipxe, cmdline and cellos-usb.img (a USB
    /// stick image that boots on UEFI and BIOS) into --out.
    Build {
        /// Farm the node joins.
        #[arg(long)]
        farm: u32,
        /// Ledger URL as the node sees it (under QEMU the host is 10.0.2.2).
        #[arg(long)]
        ledger: String,
        /// Enrollment token (`cellos farm enroll-token`): the node joins approved.
        #[arg(long)]
        enroll: Option<String>,
        /// Extra kernel cmdline, e.g. "cellos.mode=test cellos.debug".
        #[arg(long, default_value = "")]
        extra: String,
        #[arg(long, default_value = "./image")]
        out: PathBuf,
        /// OS manifest (default: the os/manifest.toml this cellos was built with).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Download cache (default: ~/.cache/cellos).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Directory holding the node binaries init and cellosd (default: next to cellos).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// Write cellos-usb.img to a USB stick. Refuses a disk that is not removable (unless
    /// --force), a partition, a mounted disk or one too small; syncs before it returns.
    Flash {
        /// The whole disk, e.g. /dev/sdb (all data on it is lost).
        #[arg(long)]
        device: PathBuf,
        /// The image to write.
        #[arg(long, default_value = "./image/cellos-usb.img")]
        image: PathBuf,
        /// Write even to a disk that does not say it is removable.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum QemuCmd {
    /// Boot an image and show its console until it powers off (Ctrl-C powers it off).
    Run {
        /// Directory written by `cellos image build`.
        #[arg(long, default_value = "./image")]
        image: PathBuf,
        #[command(flatten)]
        vm: qemu::VmArgs,
        /// Keep console.log, qmp.sock and the disks here (to boot again on them).
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
}

/// What one client may hold of a server (DESIGN §9). The server raises its
/// RLIMIT_NOFILE soft limit to the hard limit at start; the connection cap stays below it.
#[derive(Args, Clone, Debug)]
pub struct LimitArgs {
    /// Connections served at once; more are answered 503 and closed (default: the
    /// fd limit less 256, at most 16384).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Time a client has to send a request head (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = units::parse_duration)]
    pub header_timeout: std::time::Duration,
    /// Time a client has to send a request body, from its head.
    #[arg(long, default_value = "60s", value_parser = units::parse_duration)]
    pub body_timeout: std::time::Duration,
    /// Time a keep-alive connection may sit with no request before it is closed.
    #[arg(long, default_value = "60s", value_parser = units::parse_duration)]
    pub idle_timeout: std::time::Duration,
}

/// Who may keep what in the ledger's blob mailbox. Uploads are signed by an
/// account or node; blobs no contract names yet count against the uploader's quota.
#[derive(Args, Clone, Debug)]
pub struct MailboxArgs {
    /// Blobs one account may have waiting for a contract to name them.
    #[arg(long, default_value_t = 16)]
    pub blob_quota: usize,
    /// Bytes of blobs one account may have waiting for a contract to name them.
    #[arg(long, default_value = "64M", value_parser = units::parse_size)]
    pub blob_quota_bytes: u64,
    /// A blob no contract names within this time is removed.
    #[arg(long, default_value = "1h", value_parser = units::parse_duration)]
    pub blob_pending_ttl: std::time::Duration,
    /// The blobs of a closed contract (or replaced by an update) are removed after this.
    #[arg(long, default_value = "168h", value_parser = units::parse_duration)]
    pub blob_retention: std::time::Duration,
}

#[derive(Subcommand)]
pub enum LedgerCmd {
    /// Serve a ledger over HTTP, storing its chain in --data (or in etcd, with --etcd).
    Serve {
        /// Data directory (the chain in ledger.redb, the ledger's key in ledger.key,
        /// the blob mailbox).
        #[arg(long, default_value = "./ledger-data")]
        data: PathBuf,
        /// Replicated mode: keep the chain in this etcd cluster (its members' client
        /// URLs, comma-separated) instead of ledger.redb. Every ledger server given
        /// the same cluster and prefix serves one chain; they must all hold the same
        /// ledger.key (copy the first server's into the others' --data).
        #[arg(
            long,
            value_delimiter = ',',
            value_name = "URLS",
            conflicts_with = "accept_rollback"
        )]
        etcd: Vec<String>,
        /// Key prefix of the chain in etcd (one cluster can hold several chains).
        #[arg(long, default_value = "cellos/ledger/", requires = "etcd")]
        etcd_prefix: String,
        /// Save the state every this many blocks, so that a restart replays only the
        /// blocks since (0: never; the etcd store keeps no snapshots).
        #[arg(long, default_value_t = 10_000)]
        snapshot_every: u64,
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Development mode: enables the faucet.
        #[arg(long)]
        dev: bool,
        /// Chain id, fixed when the chain is created.
        #[arg(long, default_value = "cellos-local")]
        chain_id: String,
        /// Largest blob the mailbox accepts (e.g. 4M).
        #[arg(long, default_value = "4M", value_parser = units::parse_size)]
        blob_limit: u64,
        /// Seconds a suspended contract waits for a top-up before it closes
        /// (fixed when the chain is created).
        #[arg(long, default_value_t = 7 * 24 * 3600)]
        grace: u64,
        /// Serve a store whose chain is shorter than the one this ledger acknowledged
        /// (damaged pages in ledger.redb's latest commit, or an older copy put back):
        /// the lost blocks are given up and the head record reset to the store's head.
        #[arg(long)]
        accept_rollback: bool,
        #[command(flatten)]
        limits: Box<LimitArgs>,
        #[command(flatten)]
        mailbox: Box<MailboxArgs>,
        /// Serve HTTPS with this PEM certificate chain (leaf first); needs --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Replay the whole chain: every hash, every signature, every state transition.
    ///
    /// With --data, the chain stored there (the server must be stopped); without,
    /// the chain served at --url, whose state digest must match the replay.
    Verify {
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create a new key file (refuses to overwrite one).
    New,
    /// Show the public key and the encryption key of the key file.
    Show,
}

#[derive(Subcommand)]
pub enum AccountCmd {
    /// Record the encryption key of --key's account (on a dev ledger, open the
    /// account first with the existential deposit from the faucet).
    Create,
    /// Show an account (default: the one of --key).
    Show { pubkey: Option<String> },
    /// Mint funds to the account of --key, opening it if it has none (dev-mode
    /// ledgers only).
    Fund { amount: u64 },
}

#[derive(Subcommand)]
pub enum FarmCmd {
    /// Create a farm owned by --key.
    Create {
        #[arg(long)]
        name: String,
        /// Price per compute unit (1 core, 4 GiB) per hour.
        #[arg(long, default_value_t = 10)]
        cu: u64,
        /// Price per storage unit (100 GiB SSD or 1 TiB HDD) per hour.
        #[arg(long, default_value_t = 5)]
        su: u64,
        /// Price per GiB of traffic.
        #[arg(long, default_value_t = 1)]
        nu: u64,
        /// Price per public IP per hour.
        #[arg(long, default_value_t = 2)]
        ipu: u64,
        /// Key file whose enrollment tokens admit nodes at once (created if missing).
        #[arg(long)]
        enrollment_key: Option<PathBuf>,
    },
    /// Show a farm.
    Show { id: u32 },
    /// List farms.
    List,
    /// Approve a node that registered on one of your farms.
    ApproveNode { node: u32 },
    /// Print an enrollment token for images (`cellos.enroll=` on the cmdline).
    EnrollToken {
        #[arg(long)]
        farm: u32,
        /// The farm's enrollment key file.
        #[arg(long)]
        enrollment_key: PathBuf,
        /// How long the token is valid.
        #[arg(long, default_value_t = 365)]
        valid_days: u64,
    },
    /// Add a public IP (with prefix) to a farm.
    AddIp {
        #[arg(long)]
        farm: u32,
        #[arg(long)]
        ip: String,
        #[arg(long)]
        gateway: String,
    },
}

#[derive(Subcommand)]
pub enum NodeCmd {
    /// List nodes.
    List {
        #[arg(long)]
        farm: Option<u32>,
        /// up, standby or decommissioned.
        #[arg(long)]
        status: Option<String>,
    },
    /// Show a node; with a key, also your networks on it (peers, last handshake,
    /// bytes) from the node API, with a request signed by --key.
    Show {
        id: u32,
        /// Node API base URL (default: the node's address on the ledger, port 8646).
        #[arg(long)]
        api: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum ContractCmd {
    /// Reserve capacity on a node for a deployment hash.
    Create {
        #[arg(long)]
        node: u32,
        /// Deployment hash (64 hex digits).
        #[arg(long)]
        hash: String,
        #[arg(long, default_value_t = 0)]
        cru: u64,
        /// Memory, e.g. 2G.
        #[arg(long, default_value = "0", value_parser = units::parse_size)]
        mru: u64,
        /// SSD storage, e.g. 50G.
        #[arg(long, default_value = "0", value_parser = units::parse_size)]
        sru: u64,
        /// HDD storage, e.g. 1T.
        #[arg(long, default_value = "0", value_parser = units::parse_size)]
        hru: u64,
        /// Public IPs to lease from the farm.
        #[arg(long, default_value_t = 0)]
        ips: u32,
        /// Escrow deposit.
        #[arg(long)]
        deposit: u64,
    },
    /// Show a contract.
    Show { id: u64 },
    /// List contracts (default: those owned by --key).
    List {
        #[arg(long)]
        node: Option<u32>,
    },
    /// Cancel a contract (owner or node).
    Cancel { id: u64 },
    /// Add funds to a contract's escrow.
    TopUp { id: u64, amount: u64 },
}

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Signed transactions per second through a real ledger over HTTP, with fsync.
    Ledger {
        /// Nodes registered (and reporting uptime) in the throughput runs.
        #[arg(long, default_value_t = 20_000)]
        txs: usize,
        /// Nodes registered in the timed bulk registration.
        #[arg(long, default_value_t = 100_000)]
        nodes: usize,
        /// Concurrent HTTP clients.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Transactions per request (POST /v1/txs); 1 sends each alone (POST /v1/tx).
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Chain lengths whose start-up time is printed (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "10000,1000000")]
        startup_blocks: Vec<usize>,
        /// Transactions per run in etcd mode, with 1 and 3 ledger servers (0 skips it).
        #[arg(long, default_value_t = 5_000)]
        etcd_txs: usize,
    },
    /// Reed-Solomon (both crates), AEADs and the object pipeline, in GB/s.
    Ec {
        /// Seconds per figure.
        #[arg(long, default_value_t = 0.5)]
        seconds: f64,
        /// Buffer coded per call, e.g. 4M.
        #[arg(long, default_value = "4M", value_parser = units::parse_size)]
        size: u64,
        /// Object put and got through the whole pipeline, e.g. 256M.
        #[arg(long, default_value = "128M", value_parser = units::parse_size)]
        pipeline: u64,
    },
    /// redis-benchmark against shardd and redis-server, side by side.
    Shard {
        /// SET and GET requests per run at 4 KiB (four times that at 512 B pipelined
        /// 16 deep, a quarter of it at 64 KiB).
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        #[arg(long, default_value_t = 50)]
        clients: usize,
        /// The shardd binary (default: next to cellos).
        #[arg(long)]
        shardd: Option<PathBuf>,
    },
    /// Two QEMU nodes on one segment with a tenant network between them: iperf3
    /// through the WireGuard tunnel and over the bare segment, and the time from
    /// contract to a working tunnel. Builds its own image (the node image plus iperf3).
    Network {
        /// Seconds each iperf3 run sends.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// auto (KVM, falling back to TCG when the guest hangs), kvm or tcg.
        #[arg(long, default_value = "auto", value_parser = crate::qemu::parse_accel)]
        accel: cellos_qemu::Accel,
        /// vCPUs per node.
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// Memory per node.
        #[arg(long, default_value = "2G")]
        memory: String,
        /// Seconds a node may take to reach init.
        #[arg(long, default_value_t = 120)]
        boot_timeout: u64,
    },
    /// One QEMU node and a registry on this machine: contract to a running container
    /// with the image cold and cached, crun's start alone, and the image size crun
    /// adds. Builds its own images (the node image with and without crun).
    Container {
        /// auto (KVM, falling back to TCG when the guest hangs), kvm or tcg.
        #[arg(long, default_value = "auto", value_parser = crate::qemu::parse_accel)]
        accel: cellos_qemu::Accel,
        /// vCPUs of the node (each deployment reserves one).
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        #[arg(long, default_value = "2G")]
        memory: String,
        /// Seconds the node may take to reach init.
        #[arg(long, default_value_t = 120)]
        boot_timeout: u64,
        /// Container starts timed back to back on the node.
        #[arg(long, default_value_t = 10)]
        starts: u32,
    },
}
