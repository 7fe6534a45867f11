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
//! | `AUTH password` | admin login (needed for NS* when the server has an admin password) |
//! | `SELECT ns [password]` | switch namespace; read-only without password on a public one |
//! | `NSNEW ns [maxsize N] [password P] [mode M] [public 0\|1]` | create a namespace (admin) |
//! | `NSDEL ns` | delete a namespace (admin) |
//! | `NSSET ns maxsize\|password\|public\|mode value` | change a setting (admin) |
//! | `NSINFO ns` | settings and usage (admin, or a session that opened `ns`) |
//! | `NSLIST` | names (admin) |
//! | `NSCOMPACT ns` | compact its closed data files now; bytes before and after (admin) |
//! | `COMMAND ..`, `CONFIG GET ..`, `INFO` | harmless answers for redis-cli and redis-benchmark |
//!
//! Two modes. Stand-alone (the default), every connection starts on an open
//! `default` namespace, like a Redis without a password. Strict ([`Config::strict`],
//! what a node runs): there is no `default`, a connection starts with no namespace,
//! a namespace without a password cannot be opened, and only one with both a
//! password and a quota takes writes, so nothing is stored that no contract pays
//! for (DESIGN.md §9). In both modes nothing about tenants (names, sizes, counts)
//! is shown before a login, a wrong namespace and a wrong password get the same
//! answer, and password attempts are metered ([`crate::guard`]).
//!
//! Resources are bounded ([`Config`]): connections in total and per source, bytes
//! buffered per frame and across connections, and the time a client may stay idle
//! or take to send one frame. Namespace I/O (`pwrite`, `fsync`, `pread`, and a
//! writer's wait for group commit, which takes the namespace lock) runs on
//! blocking threads, never on the async ones, so a slow disk delays the writers
//! that wait for it and nobody else. Errors are RESP errors; a malformed or
//! oversize frame is answered with one and closes only that connection.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::error_chain;
use crate::guard::{AuthLimiter, Budget, Conns, Held, Slot};
use crate::namespace::{Mode, Namespace, NamespaceOptions, NsError, Truncation};
use crate::resp::{CommandParser, Limits, Reply};
use crate::sys::{self, IoError};

/// How a server is started.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory holding one subdirectory per namespace.
    pub dir: PathBuf,
    pub listen: SocketAddr,
    /// When set, namespace changes need `AUTH` with it first.
    pub admin_password: Option<String>,
    /// Node mode: no `default` namespace, no access to a namespace without a
    /// password, writes only into namespaces with a password and a quota, and no
    /// admin over the wire without an admin password.
    pub strict: bool,
    /// Largest value accepted, in bytes.
    pub max_value: usize,
    /// Size at which a data file is closed and a new one started.
    pub max_file: u64,
    /// Connections served at once.
    pub max_clients: usize,
    /// Connections from one source (an IPv4 address or an IPv6 /64).
    pub max_clients_per_source: usize,
    /// At `max_clients`, a newcomer takes the place of the connection that has
    /// gone longest without completing a command, if that is at least this long.
    pub evict_after: Duration,
    /// Bytes buffered across all connections (partial and queued commands,
    /// replies being written).
    pub max_buffered: usize,
    /// A connection with no command in progress is closed after this long.
    pub idle_timeout: Duration,
    /// Time allowed to send one command, and to take one reply.
    pub frame_timeout: Duration,
}

impl Config {
    pub fn new(dir: PathBuf, listen: SocketAddr) -> Config {
        Config {
            dir,
            listen,
            admin_password: None,
            strict: false,
            max_value: 8 << 20,
            max_file: 256 << 20,
            max_clients: 1024,
            max_clients_per_source: 128,
            evict_after: Duration::from_secs(2),
            max_buffered: 256 << 20,
            idle_timeout: Duration::from_secs(300),
            frame_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Namespace(#[from] NsError),
    #[error("listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid namespace name {0:?} (1-128 of A-Z a-z 0-9 _ - ., not starting with .)")]
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

/// Namespace reads and changes on blocking threads at once; bounds the threads
/// and the values read into memory for replies.
const IO_SLOTS: usize = 64;
/// Writes on blocking threads at once (each holds its thread until durable; with
/// the fsyncs they start, far below tokio's 512 blocking threads).
const WRITE_SLOTS: usize = 128;
/// Wrong passwords a connection may send before it is closed.
const MAX_AUTH_FAILURES: u32 = 5;
/// Replies are written out once this many bytes are queued.
const FLUSH_AT: usize = 64 << 10;

struct Shared {
    config: Config,
    limits: Limits,
    namespaces: RwLock<HashMap<String, Arc<Namespace>>>,
    changes: Mutex<()>,
    /// BLAKE3 of the admin password: compared in constant time, at equal length.
    admin_hash: Option<[u8; 32]>,
    budget: Arc<Budget>,
    conns: Arc<Conns>,
    auth: AuthLimiter,
    /// Reads and administration on blocking threads.
    io: Semaphore,
    /// Writes waiting on blocking threads, until durable.
    writes: Semaphore,
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

fn admin_hash(pw: &[u8]) -> [u8; 32] {
    blake3::derive_key("cellos-shard admin password v1", pw)
}

impl Server {
    /// Opens every namespace under `config.dir` (recovering torn tails), creates
    /// `default` if missing (not in strict mode), binds and starts serving.
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
        if !config.strict && !namespaces.contains_key(DEFAULT_NS) {
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
            // A SET's key and value, or a DEL of 64 longest keys, with room to spare.
            max_frame: config.max_value.saturating_add(128 << 10),
            ..Limits::default()
        };
        let shared = Arc::new(Shared {
            limits,
            namespaces: RwLock::new(namespaces),
            changes: Mutex::new(()),
            admin_hash: config
                .admin_password
                .as_deref()
                .map(|p| admin_hash(p.as_bytes())),
            budget: Arc::new(Budget::new(config.max_buffered)),
            conns: Arc::new(Conns::new(
                config.max_clients,
                config.max_clients_per_source,
                config.evict_after,
            )),
            auth: AuthLimiter::new(),
            io: Semaphore::new(IO_SLOTS),
            writes: Semaphore::new(WRITE_SLOTS),
            config,
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

    fn get(&self, name: &str) -> Option<Arc<Namespace>> {
        self.read_map().get(name).cloned()
    }

    /// Creations and deletions, one at a time; the map is locked only to insert or
    /// remove, never across their file I/O, so sessions looking names up never wait
    /// for a disk.
    fn changing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.changes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn create(&self, name: &str, opts: &NamespaceOptions) -> Result<(), ServerError> {
        if !valid_name(name) {
            return Err(ServerError::BadName(name.into()));
        }
        let _one = self.changing();
        if self.read_map().contains_key(name) {
            return Err(ServerError::Exists(name.into()));
        }
        let ns = Namespace::create(&self.config.dir, name, opts, self.config.max_file)?;
        self.write_map().insert(name.into(), Arc::new(ns));
        Ok(())
    }

    fn delete(&self, name: &str) -> Result<(), ServerError> {
        if name == DEFAULT_NS && !self.config.strict {
            return Err(ServerError::DeleteDefault);
        }
        let _one = self.changing();
        let ns = self
            .write_map()
            .remove(name)
            .ok_or_else(|| ServerError::NoSuchNamespace(name.into()))?;
        ns.delete()?;
        Ok(())
    }

    /// Runs namespace I/O on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Reply> {
        self.blocking_on(&self.io, f).await
    }

    /// Runs a write and the wait until it is durable on a blocking thread: the
    /// namespace's lock, which group commit takes, can be held across a data
    /// file's rotation and its fsync, and no async thread may wait for that.
    async fn writing<T: Send + 'static>(
        &self,
        f: impl FnOnce(&tokio::runtime::Handle) -> T + Send + 'static,
    ) -> Result<T, Reply> {
        let rt = tokio::runtime::Handle::current();
        self.blocking_on(&self.writes, move || f(&rt)).await
    }

    async fn blocking_on<T: Send + 'static>(
        &self,
        slots: &Semaphore,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Reply> {
        let _slot = slots
            .acquire()
            .await
            .map_err(|_| Reply::err("the server is stopping"))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Reply::err(format!("internal error in namespace I/O: {e}")))
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => match shared.conns.admit(peer.ip()) {
                Ok(slot) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let _ = stream.set_nodelay(true);
                        if let Err(e) = serve(shared, stream, peer.ip(), slot).await {
                            tracing::debug!("connection from {peer}: {e}");
                        }
                    });
                }
                Err(why) => {
                    // One line into a fresh socket's empty send buffer: never blocks.
                    let _ = stream.try_write(format!("-ERR {why}\r\n").as_bytes());
                    tracing::debug!("refused {peer}: {why}");
                }
            },
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One client's session.
struct Session {
    source: IpAddr,
    ns: Option<Arc<Namespace>>,
    /// May read the selected namespace.
    read: bool,
    /// Opened the selected namespace with its password (or it has none).
    write: bool,
    admin: bool,
    failures: u32,
    /// Close after the reply.
    quit: bool,
}

thread_local! {
    /// Where each async thread reads sockets into: the bytes go straight on to the
    /// parser, so an idle connection holds no read buffer.
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 << 10]);
}

enum Read {
    Closed,
    Bytes,
    Invalid(String),
}

/// Reads what the socket has and feeds it to the parser; complete commands go to
/// `ready`.
fn read_commands(
    stream: &TcpStream,
    parser: &mut CommandParser,
    ready: &mut VecDeque<Vec<Vec<u8>>>,
) -> std::io::Result<Read> {
    READ_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let n = match stream.try_read(&mut buf) {
            Ok(0) => return Ok(Read::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Read::Bytes),
            Err(e) => return Err(e),
        };
        let mut at = 0;
        while at < n {
            match parser.feed(&buf[at..n]) {
                Ok((used, cmd)) => {
                    at += used;
                    ready.extend(cmd);
                }
                Err(e) => return Ok(Read::Invalid(e.to_string())),
            }
        }
        Ok(Read::Bytes)
    })
}

fn queued_bytes(ready: &VecDeque<Vec<Vec<u8>>>) -> usize {
    ready
        .iter()
        .flat_map(|args| args.iter().map(Vec::capacity))
        .sum()
}

async fn serve(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: IpAddr,
    slot: Slot,
) -> std::io::Result<()> {
    let conn = slot.conn.clone();
    let default = if shared.config.strict {
        None
    } else {
        shared.get(DEFAULT_NS)
    };
    let (open, public) = match default.clone() {
        Some(ns) => shared
            .blocking(move || (ns.password_ok(None), ns.is_public()))
            .await
            .unwrap_or((false, false)),
        None => (false, false),
    };
    let mut s = Session {
        source: peer,
        read: open || public,
        write: open,
        ns: default,
        admin: shared.admin_hash.is_none() && !shared.config.strict,
        failures: 0,
        quit: false,
    };
    let cfg = &shared.config;
    let mut parser = CommandParser::new(shared.limits);
    let mut held = Held::new(shared.budget.clone());
    let mut ready: VecDeque<Vec<Vec<u8>>> = VecDeque::new();
    let mut out: Vec<u8> = Vec::new();
    let mut last_done = Instant::now();
    let mut frame_start = last_done;
    let busy = |what: &str| {
        format!(
            "-ERR server busy: {what} would pass the {} bytes buffered across connections; closing\r\n",
            shared.budget.max()
        )
    };
    loop {
        while !ready.is_empty() {
            for reply in next_replies(&shared, &mut s, &mut ready).await {
                shared.conns.touch(&conn);
                last_done = Instant::now();
                let before = out.len();
                reply.encode(&mut out);
                if !held.set(parser.held() + queued_bytes(&ready) + out.capacity()) {
                    // A reply too large for the budget is dropped for an error.
                    out.truncate(before);
                    Reply::err(
                        "server busy: reply dropped, too many bytes buffered across connections",
                    )
                    .encode(&mut out);
                    out.shrink_to(FLUSH_AT);
                }
                if out.len() >= FLUSH_AT || s.quit {
                    write_out(&mut stream, &mut out, cfg.frame_timeout).await?;
                }
                if s.quit {
                    return Ok(());
                }
            }
        }
        write_out(&mut stream, &mut out, cfg.frame_timeout).await?;
        if out.capacity() > FLUSH_AT {
            out = Vec::new();
        }
        // Only the partial command is held while waiting.
        held.set(parser.held());
        let deadline = if parser.in_frame() {
            frame_start + cfg.frame_timeout
        } else {
            last_done + cfg.idle_timeout
        };
        tokio::select! {
            biased;
            _ = conn.evicted.notified() => {
                let _ = stream.try_write(b"-ERR closed: the server is at its connection limit and this connection was the longest without a command\r\n");
                return Ok(());
            }
            _ = tokio::time::sleep_until(deadline) => {
                if parser.in_frame() {
                    close_with(&mut stream, b"-ERR timeout: a command must arrive whole within the frame timeout; closing\r\n").await;
                } else {
                    let _ = stream.try_write(b"-ERR timeout: idle connection closed\r\n");
                }
                return Ok(());
            }
            r = stream.readable() => r?,
        }
        let was_in_frame = parser.in_frame();
        let before = ready.len();
        match read_commands(&stream, &mut parser, &mut ready)? {
            Read::Closed => return Ok(()),
            Read::Invalid(e) => {
                close_with(&mut stream, format!("-ERR {e}\r\n").as_bytes()).await;
                return Ok(());
            }
            Read::Bytes => {}
        }
        if parser.in_frame() && (!was_in_frame || ready.len() > before) {
            frame_start = Instant::now();
        }
        if !held.set(parser.held() + queued_bytes(&ready)) {
            // Give back what this connection held before lingering.
            drop(parser);
            ready.clear();
            held.set(0);
            close_with(&mut stream, busy("this command").as_bytes()).await;
            return Ok(());
        }
    }
}

/// Most commands of a pipeline handled as one run.
const MAX_RUN: usize = 256;

/// How many commands at the front of `ready` are `name` with `arity` words.
fn run_of(ready: &VecDeque<Vec<Vec<u8>>>, name: &[u8], arity: usize) -> usize {
    ready
        .iter()
        .take(MAX_RUN)
        .take_while(|a| a.len() == arity && a[0].eq_ignore_ascii_case(name))
        .count()
}

/// Handles the next command of a pipeline, or the run of SETs or GETs at its
/// front together (neither changes the session, so the run answers as the
/// commands one by one would): a run of SETs is appended and then made durable
/// with one group commit, a run of GETs is read in one trip to a blocking thread.
async fn next_replies(
    shared: &Arc<Shared>,
    s: &mut Session,
    ready: &mut VecDeque<Vec<Vec<u8>>>,
) -> Vec<Reply> {
    let sets = run_of(ready, b"SET", 3);
    if sets > 1 {
        let run = ready
            .drain(..sets)
            .map(|mut a| (std::mem::take(&mut a[1]), std::mem::take(&mut a[2])))
            .collect();
        return set_run(shared, s, run).await;
    }
    let gets = run_of(ready, b"GET", 2);
    if gets > 1 {
        let keys = ready
            .drain(..gets)
            .map(|mut a| std::mem::take(&mut a[1]))
            .collect();
        return get_run(shared, s, keys).await;
    }
    match ready.pop_front() {
        Some(args) => vec![handle(shared, s, args).await],
        None => Vec::new(),
    }
}

/// `SET key value` for each pair, in order: every value is appended, then one
/// wait makes them all durable before any is acknowledged. A failed sync fails
/// every SET it covered.
async fn set_run(shared: &Arc<Shared>, s: &Session, run: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<Reply> {
    let n = run.len();
    let all = |r: Reply| vec![r; n];
    let Some(ns) = s.ns.clone() else {
        return all(Reply::Error(NO_NAMESPACE.into()));
    };
    if !s.write {
        return all(denied("writing", &ns));
    }
    let max = shared.config.max_value;
    let ns2 = ns.clone();
    let strict = shared.config.strict;
    let stored = shared
        .writing(move |rt| {
            if !takes_writes(strict, &ns2) {
                return None;
            }
            let mut upto = None;
            let mut results: Vec<Result<Vec<u8>, String>> = run
                .iter()
                .map(|(key, value)| {
                    let (key, at) = ns2
                        .append_set(key, value, max)
                        .map_err(|e| error_chain(&e))?;
                    upto = Some(at);
                    Ok(key)
                })
                .collect();
            if let Some(Err(e)) = upto.map(|at| rt.block_on(ns2.make_durable(at))) {
                let e = error_chain(&e);
                for r in results.iter_mut().filter(|r| r.is_ok()) {
                    *r = Err(e.clone());
                }
            }
            Some((results, ns2.mode()))
        })
        .await;
    let (results, mode) = match stored {
        Err(r) => return all(r),
        Ok(None) => return all(strict_denied(&ns)),
        Ok(Some(r)) => r,
    };
    results
        .into_iter()
        .map(|r| match r {
            Ok(key) if mode == Mode::Seq => Reply::Bulk(key),
            Ok(_) => Reply::ok(),
            Err(e) => Reply::err(e),
        })
        .collect()
}

/// `GET key` for each key, in order, in one trip to a blocking thread.
async fn get_run(shared: &Arc<Shared>, s: &Session, keys: Vec<Vec<u8>>) -> Vec<Reply> {
    let n = keys.len();
    let Some(ns) = s.ns.clone() else {
        return vec![Reply::Error(NO_NAMESPACE.into()); n];
    };
    if !s.read {
        return vec![denied("reading", &ns); n];
    }
    let read = move || {
        keys.iter()
            .map(|k| match ns.get(k) {
                Ok(Some(v)) => Reply::Bulk(v),
                Ok(None) => Reply::Nil,
                Err(e) => Reply::err(error_chain(&e)),
            })
            .collect()
    };
    shared.blocking(read).await.unwrap_or_else(|r| vec![r; n])
}

/// Ends a connection that is still sending with one error line. The write side
/// is shut and what the client still sends is read and dropped for a moment:
/// closing with unread input would send a reset that can destroy the line before
/// the client reads it.
async fn close_with(stream: &mut TcpStream, line: &[u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(line)).await;
    let _ = stream.shutdown().await;
    let until = Instant::now() + Duration::from_millis(500);
    let mut left: usize = 64 << 20;
    while left > 0 {
        match tokio::time::timeout_at(until, stream.readable()).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        match READ_BUF.with(|b| stream.try_read(&mut b.borrow_mut())) {
            Ok(0) => return,
            Ok(n) => left = left.saturating_sub(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

async fn write_out(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    timeout: Duration,
) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    match tokio::time::timeout(timeout, stream.write_all(out)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not take its reply within the frame timeout",
            ))
        }
    }
    out.clear();
    Ok(())
}

/// Whether `ns` takes writes at all: in strict mode only with a password and a quota.
fn takes_writes(strict: bool, ns: &Namespace) -> bool {
    !strict || (ns.has_password() && ns.info().max_size > 0)
}

fn strict_denied(ns: &Namespace) -> Reply {
    Reply::Error(format!(
        "DENIED namespace {} takes no writes: it needs a password and a quota (NSSET)",
        ns.name()
    ))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const NO_NAMESPACE: &str = "ERR no namespace selected (SELECT ns password)";

fn denied(what: &str, ns: &Namespace) -> Reply {
    Reply::Error(format!(
        "DENIED {what} namespace {} needs its password (SELECT ns password)",
        ns.name()
    ))
}

/// The one answer to a wrong password and to a namespace that does not exist,
/// so names cannot be probed.
fn select_denied(name: &str) -> Reply {
    Reply::Error(format!(
        "DENIED wrong password for namespace {name} (or no such namespace)"
    ))
}

/// Parses `NSNEW`'s optional `name value` pairs.
fn ns_options(pairs: &[Vec<u8>]) -> Result<NamespaceOptions, String> {
    if pairs.len() % 2 == 1 {
        return Err(
            "syntax: NSNEW ns [maxsize N] [password P] [mode user|seq] [public 0|1]".into(),
        );
    }
    let mut o = NamespaceOptions::default();
    for kv in pairs.chunks(2) {
        let v = text(&kv[1]);
        match text(&kv[0]).to_ascii_lowercase().as_str() {
            "maxsize" => {
                o.max_size = v
                    .parse()
                    .map_err(|_| format!("maxsize {v:?} is not a number of bytes"))?
            }
            "password" => o.password = (v != "*" && !v.is_empty()).then_some(v),
            "mode" => o.mode = Some(v.parse()?),
            "public" => o.public = matches!(v.as_str(), "1" | "true" | "yes"),
            other => {
                return Err(format!(
                    "unknown setting {other:?} (maxsize, password, mode, public)"
                ))
            }
        }
    }
    Ok(o)
}

/// Meters a password attempt; `Err` is the reply when it is refused unchecked.
async fn attempt(shared: &Shared, s: &mut Session) -> Result<crate::guard::Ticket, Reply> {
    match shared.auth.reserve(s.source) {
        Some(t) => {
            tokio::time::sleep(t.wait).await;
            Ok(t)
        }
        None => {
            s.quit = true;
            Err(Reply::err(
                "too many failed logins from your address; try again later",
            ))
        }
    }
}

/// A wrong password: answered late, and the connection closed after a few.
async fn failed(shared: &Shared, s: &mut Session) {
    shared.auth.failed();
    s.failures += 1;
    let delay = Duration::from_millis(100) * (1 << (s.failures - 1).min(4));
    tokio::time::sleep(delay.min(Duration::from_secs(1))).await;
    if s.failures >= MAX_AUTH_FAILURES {
        s.quit = true;
    }
}

async fn handle(shared: &Arc<Shared>, s: &mut Session, args: Vec<Vec<u8>>) -> Reply {
    let cmd = args[0].to_ascii_uppercase();
    let mut args = args;
    let a = &mut args[1..];
    let arity = |ok: bool, name: &[u8]| -> Option<Reply> {
        (!ok).then(|| {
            Reply::err(format!(
                "wrong number of arguments for '{}'",
                text(name).to_lowercase()
            ))
        })
    };
    macro_rules! need {
        ($cond:expr) => {
            if let Some(r) = arity($cond, &cmd) {
                return r;
            }
        };
    }
    macro_rules! io {
        ($f:expr) => {
            match shared.blocking($f).await {
                Ok(v) => v,
                Err(r) => return r,
            }
        };
    }
    macro_rules! selected {
        () => {
            match &s.ns {
                Some(ns) => ns.clone(),
                None => return Reply::Error(NO_NAMESPACE.into()),
            }
        };
    }
    match cmd.as_slice() {
        b"PING" => match a {
            [] => Reply::Simple("PONG".into()),
            [m] => Reply::Bulk(std::mem::take(m)),
            _ => Reply::err("wrong number of arguments for 'ping'"),
        },
        b"ECHO" => {
            need!(a.len() == 1);
            Reply::Bulk(std::mem::take(&mut a[0]))
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
        b"INFO" => {
            let mut info = format!(
                "# Server\r\nredis_version:7.0.0\r\nshardd_version:{}\r\n",
                env!("CARGO_PKG_VERSION")
            );
            // Counts say something about tenants: only for the admin.
            if s.admin {
                let (clients, refused, evicted) = shared.conns.stats();
                let all: Vec<Arc<Namespace>> = shared.read_map().values().cloned().collect();
                let damaged = io!(move || all.iter().map(|ns| ns.info().damaged).sum::<u64>());
                info.push_str(&format!(
                    "# Clients\r\nconnected_clients:{clients}\r\nrefused_connections:{refused}\r\nevicted_connections:{evicted}\r\nbuffered_bytes:{}\r\nfailed_logins:{}\r\n# Keyspace\r\nnamespaces:{}\r\ndamaged_records:{damaged}\r\n",
                    shared.budget.used(),
                    shared.auth.failures(),
                    shared.read_map().len()
                ));
            }
            Reply::Bulk(info.into_bytes())
        }
        b"AUTH" => {
            need!(a.len() == 1 || a.len() == 2);
            let Some(want) = shared.admin_hash else {
                return Reply::err("no admin password is set on this server");
            };
            let ticket = match attempt(shared, s).await {
                Ok(t) => t,
                Err(r) => return r,
            };
            let got = admin_hash(&a[a.len() - 1]);
            if bool::from(got.ct_eq(&want)) {
                shared.auth.succeeded(&ticket);
                s.admin = true;
                Reply::ok()
            } else {
                failed(shared, s).await;
                Reply::Error("WRONGPASS invalid admin password".into())
            }
        }
        b"SELECT" => {
            need!(a.len() == 1 || a.len() == 2);
            let name = text(&a[0]);
            let ns = shared.get(&name);
            let strict = shared.config.strict;
            let Some(pw) = a.get(1).map(|p| text(p)) else {
                // No password: an open namespace (stand-alone only), or a public one to read.
                let Some(ns) = ns else {
                    return select_denied(&name);
                };
                let ns2 = ns.clone();
                let (open, public) =
                    io!(move || (!strict && ns2.password_ok(None), ns2.is_public()));
                if !open && !public {
                    return select_denied(&name);
                }
                s.read = true;
                s.write = open;
                s.ns = Some(ns);
                return Reply::ok();
            };
            let ticket = match attempt(shared, s).await {
                Ok(t) => t,
                Err(r) => return r,
            };
            let ok = match &ns {
                Some(ns) => {
                    let ns = ns.clone();
                    io!(move || ns.password_ok(Some(&pw)) && (!strict || ns.has_password()))
                }
                None => false,
            };
            if !ok {
                failed(shared, s).await;
                return select_denied(&name);
            }
            shared.auth.succeeded(&ticket);
            s.read = true;
            s.write = true;
            s.ns = ns;
            Reply::ok()
        }
        b"NSNEW" | b"NSDEL" | b"NSSET" | b"NSLIST" | b"NSCOMPACT" if !s.admin => Reply::Error(
            "DENIED namespace administration needs AUTH with the admin password".into(),
        ),
        b"NSNEW" => {
            need!(!a.is_empty());
            let opts = match ns_options(&a[1..]) {
                Ok(o) => o,
                Err(e) => return Reply::err(e),
            };
            let name = text(&a[0]);
            let strict = shared.config.strict;
            if strict && (opts.password.is_none() || opts.max_size == 0) {
                return Reply::err("this server takes writes only into namespaces with a password and a quota: NSNEW ns maxsize N password P");
            }
            let sh = shared.clone();
            match io!(move || sh.create(&name, &opts)) {
                Ok(()) => Reply::ok(),
                Err(e) => Reply::err(error_chain(&e)),
            }
        }
        b"NSDEL" => {
            need!(a.len() == 1);
            let name = text(&a[0]);
            let sh = shared.clone();
            match io!(move || sh.delete(&name)) {
                Ok(()) => Reply::ok(),
                Err(e) => Reply::err(error_chain(&e)),
            }
        }
        b"NSSET" => {
            need!(a.len() == 3);
            let name = text(&a[0]);
            let Some(ns) = shared.get(&name) else {
                return Reply::err(ServerError::NoSuchNamespace(name));
            };
            let (prop, value) = (text(&a[1]), text(&a[2]));
            match io!(move || ns.set_property(&prop, &value)) {
                Ok(()) => Reply::ok(),
                Err(e) => Reply::err(error_chain(&e)),
            }
        }
        b"NSCOMPACT" => {
            need!(a.len() == 1);
            let name = text(&a[0]);
            let Some(ns) = shared.get(&name) else {
                return Reply::err(ServerError::NoSuchNamespace(name));
            };
            match io!(move || ns.compact()) {
                Ok(r) => Reply::Bulk(
                    format!(
                        "files_rewritten: {}\ndisk_before_bytes: {}\ndisk_after_bytes: {}\n",
                        r.files_rewritten, r.disk_before, r.disk_after
                    )
                    .into_bytes(),
                ),
                Err(e) => Reply::err(error_chain(&e)),
            }
        }
        b"NSINFO" => {
            need!(a.len() == 1);
            let name = text(&a[0]);
            let opened = s.read && s.ns.as_ref().is_some_and(|ns| ns.name() == name);
            let ns = match shared.get(&name) {
                Some(ns) if s.admin || opened => ns,
                // Same answer for absent and not yours: names cannot be probed.
                _ if !s.admin => {
                    return Reply::Error(format!(
                        "DENIED NSINFO {name}: AUTH as admin or SELECT it with its password first"
                    ))
                }
                _ => return Reply::err(ServerError::NoSuchNamespace(name)),
            };
            let i = io!(move || ns.info());
            Reply::Bulk(
                format!(
                    "# namespace\nname: {}\nmode: {}\nentries: {}\ndata_size_bytes: {}\ndisk_size_bytes: {}\ndata_limits_bytes: {}\npassword: {}\npublic: {}\ndata_files: {}\ndamaged_records: {}\ndamaged_bytes: {}\n",
                    i.name,
                    i.mode,
                    i.entries,
                    i.data_size,
                    i.disk_size,
                    i.max_size,
                    if i.password { "yes" } else { "no" },
                    if i.public { "yes" } else { "no" },
                    i.data_files,
                    i.damaged,
                    i.damaged_bytes
                )
                .into_bytes(),
            )
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
            let ns = selected!();
            if !s.read {
                return denied("reading", &ns);
            }
            let i = io!(move || ns.info());
            Reply::Int(i64::try_from(i.entries).unwrap_or(i64::MAX))
        }
        b"SET" => {
            need!(a.len() == 2);
            let pair = (std::mem::take(&mut a[0]), std::mem::take(&mut a[1]));
            let mut r = set_run(shared, s, vec![pair]).await;
            r.pop()
                .unwrap_or_else(|| Reply::err("internal error: no reply"))
        }
        b"GET" | b"CHECK" => {
            need!(a.len() == 1);
            let ns = selected!();
            if !s.read {
                return denied("reading", &ns);
            }
            let key = std::mem::take(&mut a[0]);
            if cmd == b"GET" {
                let mut r = get_run(shared, s, vec![key]).await;
                r.pop()
                    .unwrap_or_else(|| Reply::err("internal error: no reply"))
            } else {
                match io!(move || ns.check(&key)) {
                    Ok(true) => Reply::ok(),
                    Ok(false) => Reply::Nil,
                    Err(e) => Reply::err(error_chain(&e)),
                }
            }
        }
        b"DEL" => {
            need!(!a.is_empty());
            let ns = selected!();
            if !s.write {
                return denied("writing", &ns);
            }
            let keys: Vec<Vec<u8>> = a.iter_mut().map(std::mem::take).collect();
            let ns2 = ns.clone();
            let strict = shared.config.strict;
            let deleted = shared
                .writing(move |rt| {
                    if !takes_writes(strict, &ns2) {
                        return None;
                    }
                    let (mut n, mut upto, mut err) = (0i64, None, None);
                    for k in &keys {
                        match ns2.append_del(k) {
                            Ok(Some(u)) => {
                                n += 1;
                                upto = Some(u);
                            }
                            Ok(None) => {}
                            Err(e) => {
                                err = Some(e);
                                break;
                            }
                        }
                    }
                    // What was deleted before an error is made durable all the same.
                    if let Some(upto) = upto {
                        if let Err(e) = rt.block_on(ns2.make_durable(upto)) {
                            return Some(Err(e));
                        }
                    }
                    Some(err.map_or(Ok(n), Err))
                })
                .await;
            match deleted {
                Err(r) => r,
                Ok(None) => strict_denied(&ns),
                Ok(Some(Ok(n))) => Reply::Int(n),
                Ok(Some(Err(e))) => Reply::err(error_chain(&e)),
            }
        }
        b"EXISTS" => {
            need!(!a.is_empty());
            let ns = selected!();
            if !s.read {
                return denied("reading", &ns);
            }
            let keys: Vec<Vec<u8>> = a.iter_mut().map(std::mem::take).collect();
            let found = io!(move || {
                let mut n = 0i64;
                for k in &keys {
                    if ns.exists(k)? {
                        n += 1;
                    }
                }
                Ok::<_, NsError>(n)
            });
            match found {
                Ok(n) => Reply::Int(n),
                Err(e) => Reply::err(error_chain(&e)),
            }
        }
        b"SCAN" => {
            need!(a.len() == 1 || a.len() == 3);
            let ns = selected!();
            if !s.read {
                return denied("reading", &ns);
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
            let cursor = std::mem::take(&mut a[0]);
            match io!(move || ns.scan(&cursor, count)) {
                Ok((next, keys)) => Reply::Array(vec![
                    Reply::Bulk(next),
                    Reply::Array(keys.into_iter().map(Reply::Bulk).collect()),
                ]),
                Err(e) => Reply::err(error_chain(&e)),
            }
        }
        _ => Reply::err(format!("unknown command '{}'", text(&cmd))),
    }
}
