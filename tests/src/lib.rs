//! Harness for the end-to-end tests: the real image booted in QEMU (TCG) against a
//! real ledger server on the host, which the guest reaches at 10.0.2.2 through QEMU
//! user networking.
//!
//! The image (kernel, initramfs with the release binaries of this checkout) is built
//! once per test binary; each test then boots it with its own cmdline (its ledger's
//! port, its farm, its enrollment token), so tests share no state but the download
//! cache. The node binaries come from the release build the test itself is part of:
//! run `cargo build --release --workspace` first (scripts/test.sh does).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use cellos_image::{Artifacts, BootParams, BuildOptions, Install};
use cellos_ledger::client::Client;
use cellos_ledger::keys::{self, Signer};
use cellos_ledger::server::{Config as LedgerConfig, Server};
use cellos_ledger::*;
use cellos_qemu::{Accel, Boot, Config, Disk, Vm};
use ed25519_dalek::SigningKey;

pub use cellos_qemu::{DiskKind, Regex};

/// The chain id every test ledger uses (tokens are issued for it before a ledger runs).
pub const CHAIN: &str = "cellos-e2e";
/// The console line cellosd prints once the node is on the ledger.
pub const REGISTERED: &str =
    r"cellos: node (\d+) registered on farm (\d+) \(.*\) in (\d+) ms since init";
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where cargo put the binaries of this build profile (target/<profile>).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

pub struct Image {
    pub artifacts: Artifacts,
    /// The manifest's base cmdline, without the cellos.* parameters.
    pub base_cmdline: String,
    _dir: tempfile::TempDir,
}

/// Builds the image once for this test binary.
pub fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let bins = bin_dir();
        let mut binaries = Vec::new();
        for &(name, dest) in cellos_image::NODE_BINARIES {
            let p = bins.join(name);
            assert!(
                p.is_file(),
                "{} is missing: run `cargo build --release --workspace` before the end-to-end tests",
                p.display()
            );
            binaries.push(Install::new(p, dest));
        }
        let manifest = workspace().join("os/manifest.toml");
        let dir = tempfile::tempdir().expect("tempdir");
        let placeholder = BootParams { farm: 0, ledger: "http://unset".into(), enroll: None, extra: String::new() };
        let mut opts = BuildOptions::new(&manifest, dir.path(), placeholder);
        opts.binaries = binaries;
        opts.zstd_level = 3;
        let artifacts = cellos_image::build(&opts, &|l| eprintln!("image: {l}")).expect("image build");
        #[derive(serde::Deserialize)]
        struct M {
            kernel: K,
        }
        #[derive(serde::Deserialize)]
        struct K {
            cmdline: String,
        }
        let text = std::fs::read_to_string(&manifest).expect("manifest");
        let m: M = toml::from_str(&text).expect("manifest kernel.cmdline");
        println!(
            "figures: vmlinuz {} bytes, initramfs.cpio.zst {} bytes (zstd -3; {} uncompressed), {} modules",
            artifacts.vmlinuz_size, artifacts.initramfs_size, artifacts.initramfs_uncompressed_size, artifacts.module_count
        );
        Image { artifacts, base_cmdline: m.kernel.cmdline, _dir: dir }
    })
}

impl Image {
    pub fn cmdline(&self, boot: &BootParams) -> String {
        cellos_image::kernel_cmdline(&self.base_cmdline, boot).expect("cmdline")
    }

    /// A direct kernel boot with this cmdline.
    pub fn direct(&self, boot: &BootParams) -> Boot {
        Boot::Direct {
            kernel: self.artifacts.vmlinuz.clone(),
            initrd: self.artifacts.initramfs.clone(),
            cmdline: self.cmdline(boot),
        }
    }

    /// A PXE boot: a TFTP directory with the kernel, the initramfs and a boot.ipxe
    /// carrying this cmdline.
    pub fn pxe(&self, boot: &BootParams, dir: &Path) -> Boot {
        std::fs::copy(&self.artifacts.vmlinuz, dir.join(cellos_image::VMLINUZ))
            .expect("copy kernel");
        std::fs::copy(&self.artifacts.initramfs, dir.join(cellos_image::INITRAMFS))
            .expect("copy initramfs");
        let script = cellos_image::ipxe_script(
            cellos_image::VMLINUZ,
            cellos_image::INITRAMFS,
            &self.cmdline(boot),
            &self.artifacts.kernel_release,
        );
        std::fs::write(dir.join(cellos_image::BOOT_IPXE), script).expect("boot.ipxe");
        Boot::Pxe {
            tftp_dir: dir.to_path_buf(),
            bootfile: cellos_image::BOOT_IPXE.into(),
        }
    }
}

/// A VM config for tests: TCG (KVM guests hang on these hosts), 2 CPUs, 1 GiB.
pub fn vm_config(boot: Boot, disks: Vec<Disk>) -> Config {
    let mut c = Config::new(boot);
    c.accel = Accel::Tcg;
    c.cpus = 2;
    c.memory = "1G".into();
    c.disks = disks;
    c
}

/// Starts a VM; on any later failure the test prints the console (the `Vm` error
/// carries its tail).
pub fn start(c: Config) -> Vm {
    Vm::start(c).expect("start QEMU")
}

/// A ledger server on 127.0.0.1 running on its own runtime for the test's life.
pub struct Ledger {
    pub rt: tokio::runtime::Runtime,
    pub addr: SocketAddr,
    pub client: Client,
    /// Served over TLS (`https://`).
    tls: bool,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Ledger {
    /// Starts a dev-mode ledger on `port` (0: any free port).
    pub fn start(port: u16) -> Ledger {
        Self::start_with(port, None)
    }

    /// A dev-mode ledger serving TLS with the certificate and key in PEM files; its
    /// client trusts `ca_pem`.
    pub fn start_tls(cert: &Path, key: &Path, ca_pem: &str) -> Ledger {
        let tls = cellos_http::Tls::from_pem_files(cert, key).expect("the TLS certificate");
        Self::start_with(0, Some((tls, ca_pem)))
    }

    fn start_with(port: u16, tls: Option<(cellos_http::Tls, &str)>) -> Ledger {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = LedgerConfig {
            data: dir.path().to_path_buf(),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            params: ChainParams::new(CHAIN, true),
            blob_limit: 1 << 20,
            tls: tls.as_ref().map(|(t, _)| t.clone()),
            ..Default::default()
        };
        let srv = rt.block_on(Server::bind(cfg)).expect("ledger bind");
        let addr = srv.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(srv.run(async {
            let _ = stopped.await;
        }));
        let client = match &tls {
            None => Client::new(&format!("http://{addr}")),
            Some((_, ca)) => Client::with_ca(&format!("https://{addr}"), ca.as_bytes()),
        }
        .expect("client");
        Ledger {
            rt,
            addr,
            client,
            tls: tls.is_some(),
            stop: Some(stop),
            _dir: dir,
        }
    }

    /// The ledger's URL as a QEMU guest sees it.
    pub fn guest_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://10.0.2.2:{}", self.addr.port())
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A farmer's account and a farm that admits nodes with tokens of `enroll`.
    pub fn farm(&self, enroll: &SigningKey) -> FarmId {
        self.farm_named(enroll, "e2e")
    }

    /// [`Ledger::farm`] with a name of its own (farm names are unique on a ledger).
    pub fn farm_named(&self, enroll: &SigningKey, name: &str) -> FarmId {
        self.block_on(async {
            let mut farmer = Signer::new(keys::generate(), CHAIN);
            // An account is opened by money: the dev faucet brings the deposit.
            self.client
                .submit(&farmer.sign(TxBody::Faucet {
                    amount: EXISTENTIAL_DEPOSIT,
                }))
                .await
                .expect("farmer account");
            let r = self
                .client
                .submit(&farmer.sign(TxBody::CreateFarm {
                    name: name.into(),
                    // Storage dear enough that seconds of a small volume cost
                    // something: usage reports in tests move real money.
                    prices: Prices {
                        cu: 10,
                        su: 36_000,
                        nu: 1,
                        ipu: 2,
                    },
                    enrollment_key: Some(keys::public_key(enroll)),
                }))
                .await
                .expect("farm");
            r.events
                .iter()
                .find_map(Event::farm_created)
                .expect("farm id")
        })
    }

    pub fn node(&self, id: NodeId) -> Node {
        self.block_on(self.client.node(id))
            .expect("node on the ledger")
    }

    /// A user signing its own transactions: an account opened by the dev faucet, with
    /// an encryption key (so results can be sealed to it).
    pub fn user(&self) -> Signer {
        let chain = self
            .block_on(self.client.status())
            .expect("status")
            .chain_id;
        let mut user = Signer::new(keys::generate(), chain);
        self.block_on(async {
            self.client
                .submit(&user.sign(TxBody::Faucet { amount: 1_000_000 }))
                .await
                .expect("faucet");
            self.client
                .submit(&user.sign(TxBody::CreateAccount {
                    encryption_key: Some(keys::encryption_key(user.key())),
                }))
                .await
                .expect("account");
        });
        user
    }

    /// What `cellos deploy` does, with any body, hash and reservation (to see a node
    /// refuse them): seals `body` to `to`, puts it in the mailbox and creates the
    /// contract on `node`.
    pub fn order(
        &self,
        user: &mut Signer,
        node: NodeId,
        to: &EncryptionKey,
        body: &[u8],
        hash: Hash,
        reserve: Resources,
    ) -> ContractId {
        self.block_on(async {
            let sealed = deployment::seal(body, to).expect("seal");
            let blob = self.client.put_blob(user, sealed).await.expect("blob");
            let r = self
                .client
                .submit(&user.sign(TxBody::CreateContract {
                    node,
                    deployment_hash: hash,
                    resources: reserve,
                    public_ips: 0,
                    deposit: 10_000,
                    blob: Some(blob),
                }))
                .await
                .expect("contract");
            r.events.iter().find_map(|e| e.contract()).expect("id")
        })
    }

    pub fn nodes(&self) -> Vec<Node> {
        self.block_on(self.client.nodes(&Default::default()))
            .expect("nodes")
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Boot parameters for farm `farm` on `ledger_url`, approved at once by a token of
/// `enroll` (farm ids start at 1 on every fresh ledger, so a token can be made before
/// the ledger runs).
pub fn boot_params(farm: FarmId, ledger_url: &str, enroll: &SigningKey) -> BootParams {
    let token = EnrollToken::issue(enroll, CHAIN, farm, u64::MAX);
    BootParams {
        farm,
        ledger: ledger_url.into(),
        enroll: Some(token.to_text()),
        extra: "cellos.mode=test".into(),
    }
}

/// Parses the registration line: (node id, farm id, ms since init).
pub fn registered(line: &str) -> (NodeId, FarmId, u64) {
    let re = Regex::new(REGISTERED).expect("regex");
    let c = re.captures(line).expect("registration line");
    let n = |i: usize| {
        c.get(i)
            .map_or("", |m| m.as_str())
            .parse::<u64>()
            .expect("number")
    };
    (n(1) as NodeId, n(2) as FarmId, n(3))
}

/// Where cellosd serves the node API inside the guest.
pub const NODE_API_PORT: u16 = 8646;

/// A shell command for a node's debug shell: an HTTP GET with busybox `nc`, after
/// `prefix` (e.g. an `nsenter`). Busybox's static `wget` crashes in the image (its
/// name lookup needs glibc's NSS modules), so a failing `wget` proves nothing. The
/// output holds the status line (`HTTP/1.0 200 OK`) when something answered.
pub fn http_get(prefix: &str, addr: &str, port: u16, path: &str) -> String {
    format!("printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | {prefix} nc -w 3 {addr} {port}")
}

/// Runs the release `cellos` CLI of this build as a user would; (success, stdout, stderr).
pub fn cellos_cli(args: &[&str], url: &str, key: &Path) -> (bool, String, String) {
    let out = std::process::Command::new(bin_dir().join("cellos"))
        .args(args)
        .env("CELLOS_LEDGER", url)
        .env("CELLOS_KEY", key)
        .output()
        .expect("run cellos");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A GET on a node's API forwarded to `port` on the host, signed with `key` for the
/// node whose key is `node` when given (DESIGN §9), with curl like any client would.
/// Returns the HTTP status (0 when the node did not answer) and the body.
pub fn node_api(port: u16, path: &str, signed: Option<(&SigningKey, &PublicKey)>) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-m", "10", "-w", "\n%{http_code}"]);
    if let Some((key, node)) = signed {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for (name, value) in request::RequestAuth::sign(key, node, "GET", path, now).headers() {
            cmd.args(["-H", &format!("{name}: {value}")]);
        }
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}
