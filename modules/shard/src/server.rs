//! The shard server: namespaces served over RESP to many clients at once.
//!
//! The command set mirrors ThreeFold's 0-db where it makes sense, so tools written
//! for one work with the other, and stays close enough to Redis that redis-cli
//! and redis-benchmark work unchanged:
//!
//! | command | reply |
//! |---|---|
//! | `PING [msg]`, `ECHO msg`, `QUIT` | as Redis |
//! | `SET key value` | `+OK` (user mode); in seq mode `SET "" value` returns the new key |
//! | `GET key` | the value (checksum verified) or nil |
//! | `DEL key..`, `EXISTS key..` | number of keys deleted / existing |
//! | `CHECK key` | `+OK` if the record's checksum holds, nil if absent, error if corrupt |
//! | `SCAN cursor [COUNT n]` | `[next cursor, [keys]]`; cursor `0` starts and ends |
//! | `DBSIZE` | keys in the selected namespace |
//! | `AUTH password` | admin login (needed for NS* changes when the server has an admin password) |
//! | `SELECT ns [password]` | switch namespace; read-only without password on a public one |
//! | `NSNEW ns`, `NSDEL ns` | create / delete a namespace (admin) |
//! | `NSSET ns maxsize\|password\|public\|mode value` | change a setting (admin) |
//! | `NSINFO ns`, `NSLIST` | settings and usage / names |
//! | `COMMAND ..`, `CONFIG GET ..`, `INFO` | harmless answers for redis-cli and redis-benchmark |
//!
//! Every connection starts on the `default` namespace. Errors (bad command, oversize
//! value, wrong password, quota) are RESP errors; a malformed frame closes only
//! that connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::namespace::{Mode, Namespace, NamespaceOptions, NsError, Truncation};
use crate::resp::{self, Limits, Reply};
use crate::sys::{self, IoError};

/// How a server is started.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory holding one subdirectory per namespace.
    pub dir: PathBuf,
    pub listen: SocketAddr,
    /// When set, namespace changes need `AUTH` with it first.
    pub admin_password: Option<String>,
    /// Largest value accepted, in bytes.
    pub max_value: usize,
    /// Size at which a data file is closed and a new one started.
    pub max_file: u64,
    /// Connections served at once; more wait for a free slot.
    pub max_clients: usize,
}

impl Config {
    pub fn new(dir: PathBuf, listen: SocketAddr) -> Config {
        Config {
            dir,
            listen,
            admin_password: None,
            max_value: 8 << 20,
            max_file: 256 << 20,
            max_clients: 4096,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Namespace(#[from] NsError),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid namespace name {0:?} (1-64 of A-Z a-z 0-9 _ - ., not starting with .)")]
    BadName(String),
    #[error("namespace {0} already exists")]
    Exists(String),
    #[error("namespace {0} does not exist")]
    NoSuchNamespace(String),
    #[error("namespace default cannot be deleted")]
    DeleteDefault,
}

/// Where a namespace is reachable: what the `shard` workload reports back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub namespace: String,
}

struct Shared {
    config: Config,
    limits: Limits,
    namespaces: RwLock<HashMap<String, Arc<Namespace>>>,
}

/// A running server. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    shared: Arc<Shared>,
    addr: SocketAddr,
    recovered: Vec<Truncation>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

pub const DEFAULT_NS: &str = "default";

fn valid_name(name: &str) -> bool {
    // 128: room for the provision engine's `c<contract>-<workload>` names.
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl Server {
    /// Opens every namespace under `config.dir` (recovering torn tails), creates
    /// `default` if missing, binds and starts serving.
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        sys::create_dir(&config.dir)?;
        let mut namespaces = HashMap::new();
        let mut recovered = Vec::new();
        for name in sys::list_dir(&config.dir)? {
            if !valid_name(&name) || !config.dir.join(&name).join("namespace.json").exists() {
                continue;
            }
            let (ns, cuts) = Namespace::open(&config.dir, &name, config.max_file)?;
            recovered.extend(cuts);
            namespaces.insert(name, Arc::new(ns));
        }
        if !namespaces.contains_key(DEFAULT_NS) {
            let ns = Namespace::create(
                &config.dir,
                DEFAULT_NS,
                &NamespaceOptions::default(),
                config.max_file,
            )?;
            namespaces.insert(DEFAULT_NS.into(), Arc::new(ns));
        }
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                addr: config.listen,
                source,
            })?;
        let limits = Limits {
            max_bulk: config.max_value,
            ..Limits::default()
        };
        let shared = Arc::new(Shared {
            config,
            limits,
            namespaces: RwLock::new(namespaces),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(shared.clone(), listener, stopped));
        Ok(Server {
            shared,
            addr,
            recovered,
            stop,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Torn tails cut while opening the namespaces.
    pub fn recovered(&self) -> &[Truncation] {
        &self.recovered
    }

    /// Creates a namespace (what the provision engine's `shard` workload does).
    pub fn create_namespace(
        &self,
        name: &str,
        opts: &NamespaceOptions,
    ) -> Result<Endpoint, ServerError> {
        self.shared.create(name, opts)?;
        Ok(Endpoint {
            addr: self.addr,
            namespace: name.into(),
        })
    }

    pub fn delete_namespace(&self, name: &str) -> Result<(), ServerError> {
        self.shared.delete(name)
    }

    /// Stops accepting connections; open connections end with the runtime.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

impl Shared {
    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Namespace>>> {
        // Map updates are single insert/remove calls: a poisoned lock is still consistent.
        self.namespaces.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_map(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Namespace>>> {
        self.namespaces.write().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, name: &str) -> Result<Arc<Namespace>, ServerError> {
        self.read_map()
            .get(name)
            .cloned()
            .ok_or_else(|| ServerError::NoSuchNamespace(name.into()))
    }

    fn create(&self, name: &str, opts: &NamespaceOptions) -> Result<(), ServerError> {
        if !valid_name(name) {
            return Err(ServerError::BadName(name.into()));
        }
        let mut map = self.write_map();
        if map.contains_key(name) {
            return Err(ServerError::Exists(name.into()));
        }
        let ns = Namespace::create(&self.config.dir, name, opts, self.config.max_file)?;
        map.insert(name.into(), Arc::new(ns));
        Ok(())
    }

    fn delete(&self, name: &str) -> Result<(), ServerError> {
        if name == DEFAULT_NS {
            return Err(ServerError::DeleteDefault);
        }
        let ns = self
            .write_map()
            .remove(name)
            .ok_or_else(|| ServerError::NoSuchNamespace(name.into()))?;
        ns.delete()?;
        Ok(())
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(shared.config.max_clients.max(1)));
    loop {
        let permit = tokio::select! {
            _ = stop.changed() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    if let Err(e) = serve(shared, stream).await {
                        tracing::debug!("connection from {peer}: {e}");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// One client's session.
struct Session {
    ns: Arc<Namespace>,
    /// May read the selected namespace.
    read: bool,
    /// May write the selected namespace.
    write: bool,
    admin: bool,
    quit: bool,
}

async fn serve(shared: Arc<Shared>, mut stream: TcpStream) -> std::io::Result<()> {
    let default = match shared.get(DEFAULT_NS) {
        Ok(ns) => ns,
        Err(_) => return Ok(()),
    };
    let open = default.password_ok(None);
    let mut s = Session {
        read: open || default.is_public(),
        write: open,
        ns: default,
        admin: shared.config.admin_password.is_none(),
        quit: false,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    let mut out: Vec<u8> = Vec::with_capacity(16 << 10);
    loop {
        let mut used = 0;
        loop {
            match resp::parse_command(&buf[used..], &shared.limits) {
                Ok(Some((args, n))) => {
                    used += n;
                    if !args.is_empty() {
                        let reply = handle(&shared, &mut s, &args).await;
                        reply.encode(&mut out);
                    }
                    if s.quit {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    Reply::err(&e).encode(&mut out);
                    stream.write_all(&out).await?;
                    return Ok(());
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if s.quit {
            return Ok(());
        }
        buf.drain(..used);
        buf.reserve(64 << 10);
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn denied(what: &str, s: &Session) -> Reply {
    Reply::Error(format!(
        "DENIED {what} namespace {} needs its password (SELECT ns password)",
        s.ns.name()
    ))
}

fn ns_err(e: NsError) -> Reply {
    Reply::err(e)
}

async fn handle(shared: &Shared, s: &mut Session, args: &[Vec<u8>]) -> Reply {
    let cmd = args[0].to_ascii_uppercase();
    let a = &args[1..];
    let arity = |ok: bool| -> Option<Reply> {
        (!ok).then(|| {
            Reply::err(format!(
                "wrong number of arguments for '{}'",
                text(&args[0]).to_lowercase()
            ))
        })
    };
    macro_rules! need {
        ($cond:expr) => {
            if let Some(r) = arity($cond) {
                return r;
            }
        };
    }
    match cmd.as_slice() {
        b"PING" => match a {
            [] => Reply::Simple("PONG".into()),
            [m] => Reply::Bulk(m.clone()),
            _ => Reply::err("wrong number of arguments for 'ping'"),
        },
        b"ECHO" => {
            need!(a.len() == 1);
            Reply::Bulk(a[0].clone())
        }
        b"QUIT" => {
            s.quit = true;
            Reply::ok()
        }
        // redis-cli asks for command docs, redis-benchmark for its config: nothing to say.
        b"COMMAND" => Reply::Array(Vec::new()),
        b"CONFIG" => match a.first().map(|c| c.to_ascii_uppercase()) {
            // Every parameter asked for is reported as empty.
            Some(c) if c == b"GET" => Reply::Array(
                a[1..]
                    .iter()
                    .flat_map(|p| [Reply::Bulk(p.clone()), Reply::Bulk(Vec::new())])
                    .collect(),
            ),
            _ => Reply::err("only CONFIG GET is supported (and answers empty values)"),
        },
        b"INFO" => Reply::Bulk(
            format!(
                "# Server\r\nredis_version:7.0.0\r\nshardd_version:{}\r\nnamespaces:{}\r\n",
                env!("CARGO_PKG_VERSION"),
                shared.read_map().len()
            )
            .into_bytes(),
        ),
        b"AUTH" => {
            need!(a.len() == 1 || a.len() == 2);
            let pw = text(&a[a.len() - 1]);
            match &shared.config.admin_password {
                Some(admin) if *admin == pw => {
                    s.admin = true;
                    Reply::ok()
                }
                Some(_) => Reply::Error("WRONGPASS invalid admin password".into()),
                None => Reply::err("no admin password is set on this server"),
            }
        }
        b"SELECT" => {
            need!(a.len() == 1 || a.len() == 2);
            let name = text(&a[0]);
            let ns = match shared.get(&name) {
                Ok(ns) => ns,
                Err(e) => return Reply::err(e),
            };
            let pw = a.get(1).map(|p| text(p));
            let ok = ns.password_ok(pw.as_deref());
            if !ok && (pw.is_some() || !ns.is_public()) {
                return Reply::Error(format!("DENIED wrong password for namespace {name}"));
            }
            s.read = true;
            s.write = ok;
            s.ns = ns;
            Reply::ok()
        }
        b"NSNEW" | b"NSDEL" | b"NSSET" if !s.admin => {
            Reply::Error("DENIED namespace changes need AUTH with the admin password".into())
        }
        b"NSNEW" => {
            need!(a.len() == 1);
            match shared.create(&text(&a[0]), &NamespaceOptions::default()) {
                Ok(()) => Reply::ok(),
                Err(e) => Reply::err(e),
            }
        }
        b"NSDEL" => {
            need!(a.len() == 1);
            match shared.delete(&text(&a[0])) {
                Ok(()) => Reply::ok(),
                Err(e) => Reply::err(e),
            }
        }
        b"NSSET" => {
            need!(a.len() == 3);
            match shared.get(&text(&a[0])) {
                Ok(ns) => match ns.set_property(&text(&a[1]), &text(&a[2])) {
                    Ok(()) => Reply::ok(),
                    Err(e) => ns_err(e),
                },
                Err(e) => Reply::err(e),
            }
        }
        b"NSINFO" => {
            need!(a.len() == 1);
            match shared.get(&text(&a[0])) {
                Ok(ns) => {
                    let i = ns.info();
                    Reply::Bulk(
                        format!(
                            "# namespace\nname: {}\nmode: {}\nentries: {}\ndata_size_bytes: {}\ndisk_size_bytes: {}\ndata_limits_bytes: {}\npassword: {}\npublic: {}\ndata_files: {}\n",
                            i.name,
                            i.mode,
                            i.entries,
                            i.data_size,
                            i.disk_size,
                            i.max_size,
                            if i.password { "yes" } else { "no" },
                            if i.public { "yes" } else { "no" },
                            i.data_files
                        )
                        .into_bytes(),
                    )
                }
                Err(e) => Reply::err(e),
            }
        }
        b"NSLIST" => {
            let mut names: Vec<String> = shared.read_map().keys().cloned().collect();
            names.sort();
            Reply::Array(
                names
                    .into_iter()
                    .map(|n| Reply::Bulk(n.into_bytes()))
                    .collect(),
            )
        }
        b"DBSIZE" => {
            if !s.read {
                return denied("reading", s);
            }
            Reply::Int(i64::try_from(s.ns.info().entries).unwrap_or(i64::MAX))
        }
        b"SET" => {
            need!(a.len() == 2);
            if !s.write {
                return denied("writing", s);
            }
            match s.ns.set(&a[0], &a[1], shared.config.max_value).await {
                Ok(key) if s.ns.mode() == Mode::Seq => Reply::Bulk(key),
                Ok(_) => Reply::ok(),
                Err(e) => ns_err(e),
            }
        }
        b"GET" => {
            need!(a.len() == 1);
            if !s.read {
                return denied("reading", s);
            }
            match s.ns.get(&a[0]) {
                Ok(Some(v)) => Reply::Bulk(v),
                Ok(None) => Reply::Nil,
                Err(e) => ns_err(e),
            }
        }
        b"CHECK" => {
            need!(a.len() == 1);
            if !s.read {
                return denied("reading", s);
            }
            match s.ns.check(&a[0]) {
                Ok(true) => Reply::ok(),
                Ok(false) => Reply::Nil,
                Err(e) => ns_err(e),
            }
        }
        b"DEL" => {
            need!(!a.is_empty());
            if !s.write {
                return denied("writing", s);
            }
            let mut n = 0;
            for k in a {
                match s.ns.del(k).await {
                    Ok(true) => n += 1,
                    Ok(false) => {}
                    Err(e) => return ns_err(e),
                }
            }
            Reply::Int(n)
        }
        b"EXISTS" => {
            need!(!a.is_empty());
            if !s.read {
                return denied("reading", s);
            }
            let mut n = 0;
            for k in a {
                match s.ns.exists(k) {
                    Ok(true) => n += 1,
                    Ok(false) => {}
                    Err(e) => return ns_err(e),
                }
            }
            Reply::Int(n)
        }
        b"SCAN" => {
            need!(a.len() == 1 || a.len() == 3);
            if !s.read {
                return denied("reading", s);
            }
            let mut count = 10;
            if a.len() == 3 {
                match (
                    a[1].to_ascii_uppercase().as_slice(),
                    text(&a[2]).parse::<usize>(),
                ) {
                    (b"COUNT", Ok(n)) if n > 0 => count = n.min(10_000),
                    _ => return Reply::err("syntax: SCAN cursor [COUNT n]"),
                }
            }
            match s.ns.scan(&a[0], count) {
                Ok((next, keys)) => Reply::Array(vec![
                    Reply::Bulk(next),
                    Reply::Array(keys.into_iter().map(Reply::Bulk).collect()),
                ]),
                Err(e) => ns_err(e),
            }
        }
        _ => Reply::err(format!("unknown command '{}'", text(&args[0]))),
    }
}
