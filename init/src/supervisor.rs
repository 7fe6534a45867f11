//! Service supervision: start in order, restart with backoff, log, reap, stop in reverse.
//!
//! As PID 1, init inherits every orphan on the node, so reaping is a `waitpid(-1, WNOHANG)`
//! loop; exits of our own services are recognised by pid, everything else is an orphan that
//! is just collected. The supervisor does not wait for signals itself: the caller (init's
//! main loop, or a test) calls [`Supervisor::poll`] on SIGCHLD or when
//! [`Supervisor::next_deadline`] passes. Outside PID 1 the same code works in a process that
//! made itself a child subreaper (`prctl(PR_SET_CHILD_SUBREAPER)`), which is how the tests
//! run it with real child processes.
//!
//! Each service's stdout and stderr share one pipe; a thread per service splits it into lines,
//! prints them prefixed with `[name] ` and keeps the last lines in a ring buffer.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::backoff::{human, Backoff, BackoffPolicy};
use crate::manifest::ServiceSpec;

/// Where console lines go (init: the console; tests: a vector).
pub type LogSink = Arc<dyn Fn(&str) + Send + Sync>;

/// Lines kept per service.
pub const RING_LINES: usize = 200;

type Ring = Arc<Mutex<VecDeque<String>>>;

struct Service {
    spec: ServiceSpec,
    pid: Option<Pid>,
    started: Instant,
    backoff: Backoff,
    start_at: Option<Instant>,
    starts: u32,
    ring: Ring,
}

/// Runs and watches the manifest's services.
pub struct Supervisor {
    services: Vec<Service>,
    env: Vec<(String, String)>,
    log: LogSink,
    stopping: bool,
    orphans_reaped: u64,
    exits: Option<ExitBook>,
}

/// How orphans ended, as files `<dir>/<pid>` holding `exit <code>` or `signal <n>`,
/// for whoever started them (cellosd's containers). At most [`ExitBook::KEEP`] are
/// kept: the oldest go first, so a node that never reads them stays bounded.
pub struct ExitBook {
    dir: std::path::PathBuf,
    written: VecDeque<i32>,
}

impl ExitBook {
    pub const KEEP: usize = 1024;

    pub fn new(dir: impl Into<std::path::PathBuf>) -> ExitBook {
        ExitBook {
            dir: dir.into(),
            written: VecDeque::new(),
        }
    }

    /// Records `pid`'s end; a failure to write is not init's problem (the reader
    /// then knows only that the process is gone).
    pub fn record(&mut self, pid: i32, status: ExitStatus) {
        let text = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit {code}\n"),
            (None, Some(sig)) => format!("signal {sig}\n"),
            (None, None) => return,
        };
        let _ = std::fs::create_dir_all(&self.dir);
        if std::fs::write(self.dir.join(pid.to_string()), text).is_ok() {
            self.written.push_back(pid);
        }
        while self.written.len() > Self::KEEP {
            if let Some(old) = self.written.pop_front() {
                let _ = std::fs::remove_file(self.dir.join(old.to_string()));
            }
        }
    }
}

impl Supervisor {
    /// A supervisor for `services` (already in start order), giving each the extra
    /// environment `env`. Nothing starts before [`Supervisor::start_all`].
    pub fn new(
        services: Vec<ServiceSpec>,
        env: Vec<(String, String)>,
        policy: BackoffPolicy,
        log: LogSink,
    ) -> Self {
        let now = Instant::now();
        let services = services
            .into_iter()
            .map(|spec| Service {
                spec,
                pid: None,
                started: now,
                backoff: Backoff::new(policy),
                start_at: None,
                starts: 0,
                ring: Arc::new(Mutex::new(VecDeque::new())),
            })
            .collect();
        Supervisor {
            services,
            env,
            log,
            stopping: false,
            orphans_reaped: 0,
            exits: None,
        }
    }

    /// Records how orphans end in `book` from now on.
    pub fn record_orphan_exits(&mut self, book: ExitBook) {
        self.exits = Some(book);
    }

    /// Start every service, in order.
    pub fn start_all(&mut self) {
        let now = Instant::now();
        for i in 0..self.services.len() {
            self.spawn(i, now);
        }
    }

    /// Reap whatever exited and start services whose restart time has come. Call on SIGCHLD
    /// and at [`Supervisor::next_deadline`].
    pub fn poll(&mut self) {
        self.reap();
        if self.stopping {
            return;
        }
        let now = Instant::now();
        for i in 0..self.services.len() {
            if self.services[i].start_at.is_some_and(|t| t <= now) {
                self.spawn(i, now);
            }
        }
    }

    /// When the next restart is due, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.services.iter().filter_map(|s| s.start_at).min()
    }

    /// Stop all services in reverse start order: SIGTERM to the service's process group, up to
    /// `grace` for it to exit, then SIGKILL. No restarts happen afterwards.
    pub fn stop_all(&mut self, grace: Duration) {
        self.stopping = true;
        for s in &mut self.services {
            s.start_at = None;
        }
        for i in (0..self.services.len()).rev() {
            let Some(pid) = self.services[i].pid else {
                continue;
            };
            let name = self.services[i].spec.name.clone();
            self.say(&format!("stopping service {name}"));
            signal_group(pid, Signal::SIGTERM);
            let now = Instant::now();
            let deadline = now.checked_add(grace).unwrap_or(now);
            let mut killed_at: Option<Instant> = None;
            while self.services[i].pid.is_some() {
                self.reap();
                if self.services[i].pid.is_none() {
                    break;
                }
                let now = Instant::now();
                match killed_at {
                    None if now >= deadline => {
                        self.say(&format!(
                            "service {name} did not stop within {}, killing it",
                            human(grace)
                        ));
                        signal_group(pid, Signal::SIGKILL);
                        killed_at = Some(now);
                    }
                    Some(t) if now.duration_since(t) > Duration::from_secs(5) => {
                        self.say(&format!(
                            "service {name} (pid {pid}) survives SIGKILL, giving up on it"
                        ));
                        self.services[i].pid = None;
                    }
                    _ => {}
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The last lines a service printed, oldest first (at most [`RING_LINES`]).
    pub fn recent_lines(&self, name: &str) -> Vec<String> {
        self.find(name)
            .map(|s| {
                let ring = s.ring.lock().unwrap_or_else(PoisonError::into_inner);
                ring.iter().cloned().collect()
            })
            .unwrap_or_default()
    }

    /// How many times a service has been started (0 for unknown names).
    pub fn starts(&self, name: &str) -> u32 {
        self.find(name).map_or(0, |s| s.starts)
    }

    /// The pid of a running service.
    pub fn pid(&self, name: &str) -> Option<i32> {
        self.find(name).and_then(|s| s.pid).map(Pid::as_raw)
    }

    /// Processes reaped that were not our services (orphans re-parented to us).
    pub fn orphans_reaped(&self) -> u64 {
        self.orphans_reaped
    }

    fn find(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.spec.name == name)
    }

    fn say(&self, msg: &str) {
        (self.log)(&format!("cellos-init: {msg}"));
    }

    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    self.on_exit(pid, ExitStatus::from_raw((code & 0xff) << 8))
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.on_exit(pid, ExitStatus::from_raw(sig as i32))
                }
                Ok(WaitStatus::StillAlive) => return,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                // ECHILD: nothing left to wait for.
                Err(_) => return,
            }
        }
    }

    fn on_exit(&mut self, pid: Pid, status: ExitStatus) {
        let Some(i) = self.services.iter().position(|s| s.pid == Some(pid)) else {
            self.orphans_reaped += 1;
            if let Some(book) = &mut self.exits {
                book.record(pid.as_raw(), status);
            }
            return;
        };
        let now = Instant::now();
        let stopping = self.stopping;
        let s = &mut self.services[i];
        s.pid = None;
        let how = describe(status);
        if stopping {
            let msg = format!("service {} stopped ({how})", s.spec.name);
            self.say(&msg);
            return;
        }
        let delay = s.backoff.on_exit(now.saturating_duration_since(s.started));
        s.start_at = Some(now.checked_add(delay).unwrap_or(now));
        let msg = format!(
            "service {} {how}, restarting in {}",
            s.spec.name,
            human(delay)
        );
        self.say(&msg);
    }

    fn spawn(&mut self, i: usize, now: Instant) {
        let env = self.env.clone();
        let log = self.log.clone();
        let s = &mut self.services[i];
        s.start_at = None;
        s.starts += 1;
        s.started = now;
        match start(&s.spec, &env, log.clone(), s.ring.clone()) {
            Ok(pid) => s.pid = Some(pid),
            Err(e) => {
                let delay = s.backoff.on_exit(Duration::ZERO);
                s.start_at = Some(now.checked_add(delay).unwrap_or(now));
                log(&format!(
                    "cellos-init: cannot start service {} ({}): {e}, retrying in {}",
                    s.spec.name,
                    s.spec.exec.join(" "),
                    human(delay)
                ));
            }
        }
    }
}

/// `exited with status 1` / `was killed by signal 9 (SIGKILL)`.
fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else if let Some(sig) = status.signal() {
        match Signal::try_from(sig) {
            Ok(s) => format!("was killed by signal {sig} ({})", s.as_str()),
            Err(_) => format!("was killed by signal {sig}"),
        }
    } else {
        format!("ended ({status})")
    }
}

fn signal_group(pid: Pid, sig: Signal) {
    // Services lead their own process group; signal helpers too. Fall back to the pid alone.
    if kill(Pid::from_raw(-pid.as_raw()), sig).is_err() {
        let _ = kill(pid, sig);
    }
}

fn start(
    spec: &ServiceSpec,
    env: &[(String, String)],
    log: LogSink,
    ring: Ring,
) -> std::io::Result<Pid> {
    let (program, args) = spec
        .exec
        .split_first()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty exec"))?;
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let write2 = write.try_clone()?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::from(write2))
        .process_group(0);
    // Init blocks the signals it takes synchronously, and a blocked mask survives exec:
    // without this a service never sees SIGTERM (std does not reset the mask here).
    // SAFETY: the closure runs between fork and exec and only calls sigprocmask, which is
    // async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(crate::sys::unblock_all_signals);
    }
    let child = cmd.spawn()?;
    // Our copies of the write end close with `cmd`, so the reader sees EOF when the service
    // (and whatever inherited its output) is gone.
    drop(cmd);
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    // The child is reaped by our waitpid(-1) loop, never through `Child`, which does not wait
    // on drop.
    drop(child);
    let prefix = format!("[{}] ", spec.name);
    let reader_log = log.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("log-{}", spec.name))
        .spawn(move || pump(File::from(read), &prefix, &reader_log, &ring));
    if let Err(e) = spawned {
        // Without a reader the service blocks once the pipe is full; it is running, so say so
        // rather than kill it.
        log(&format!(
            "cellos-init: cannot start the log reader for {}: {e}",
            spec.name
        ));
    }
    Ok(pid)
}

fn pump(file: File, prefix: &str, log: &LogSink, ring: &Ring) {
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                let text = text.trim_end_matches(['\n', '\r']);
                log(&format!("{prefix}{text}"));
                let mut r = ring.lock().unwrap_or_else(PoisonError::into_inner);
                if r.len() >= RING_LINES {
                    r.pop_front();
                }
                r.push_back(text.to_string());
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}
