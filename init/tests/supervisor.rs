//! The supervisor on the host, with real child processes. The test process makes itself a
//! child subreaper so orphans come back to it, as they would to PID 1. Tests share one
//! process and `waitpid(-1)` would steal each other's children, so they run one at a time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cellos_init::backoff::BackoffPolicy;
use cellos_init::manifest::ServiceSpec;
use cellos_init::supervisor::{ExitBook, LogSink, Supervisor};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    cellos_init::sys::set_child_subreaper().expect("PR_SET_CHILD_SUBREAPER");
    guard
}

fn sh(name: &str, script: &str) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        exec: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        after: Vec::new(),
    }
}

fn capture() -> (LogSink, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink_lines = lines.clone();
    let sink: LogSink = Arc::new(move |l: &str| {
        sink_lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(l.to_string());
    });
    (sink, lines)
}

fn fast() -> BackoffPolicy {
    BackoffPolicy {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(400),
        reset_after: Duration::from_secs(60),
    }
}

/// Poll the supervisor until `done` or the timeout.
fn run_until(
    sup: &mut Supervisor,
    timeout: Duration,
    mut done: impl FnMut(&Supervisor) -> bool,
) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        sup.poll();
        if done(sup) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn snapshot(lines: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    lines.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

#[test]
fn restarts_with_backoff_and_prefixes_output() {
    let _g = serial();
    let (sink, lines) = capture();
    let mut sup = Supervisor::new(
        vec![sh("flaky", "echo hi; echo oops >&2; exit 1")],
        Vec::new(),
        fast(),
        sink,
    );
    let started = Instant::now();
    sup.start_all();
    assert!(run_until(&mut sup, Duration::from_secs(10), |s| s
        .starts("flaky")
        >= 4));
    // Delays 100 + 200 + 400 ms before the 4th start.
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    sup.stop_all(Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(100));
    let log = snapshot(&lines);
    assert!(log.iter().any(|l| l == "[flaky] hi"), "{log:#?}");
    assert!(log.iter().any(|l| l == "[flaky] oops"), "{log:#?}");
    let restarts: Vec<&String> = log.iter().filter(|l| l.contains("restarting in")).collect();
    assert!(restarts.len() >= 3, "{log:#?}");
    assert_eq!(
        restarts[0],
        "cellos-init: service flaky exited with status 1, restarting in 100ms"
    );
    assert_eq!(
        restarts[1],
        "cellos-init: service flaky exited with status 1, restarting in 200ms"
    );
    assert_eq!(
        restarts[2],
        "cellos-init: service flaky exited with status 1, restarting in 400ms"
    );
    let recent = sup.recent_lines("flaky");
    assert!(
        recent.len() >= 6 && recent.iter().all(|l| l == "hi" || l == "oops"),
        "{recent:?}"
    );
}

#[test]
fn services_get_the_environment() {
    let _g = serial();
    let (sink, lines) = capture();
    let mut spec = sh("envy", "echo farm=$CELLOS_FARM own=$OWN; sleep 5");
    spec.env.insert("OWN".into(), "yes".into());
    let mut sup = Supervisor::new(
        vec![spec],
        vec![("CELLOS_FARM".into(), "7".into())],
        fast(),
        sink,
    );
    sup.start_all();
    assert!(run_until(&mut sup, Duration::from_secs(5), |s| !s
        .recent_lines("envy")
        .is_empty()));
    assert_eq!(sup.recent_lines("envy"), vec!["farm=7 own=yes"]);
    sup.stop_all(Duration::from_secs(2));
    assert!(snapshot(&lines)
        .iter()
        .any(|l| l == "cellos-init: service envy stopped (was killed by signal 15 (SIGTERM))"));
}

#[test]
fn reaps_orphans() {
    let _g = serial();
    let (sink, _lines) = capture();
    // The service leaves two background children behind and exits; they become ours.
    let spec = sh(
        "parent",
        "sleep 0.2 >/dev/null 2>&1 & sleep 0.3 >/dev/null 2>&1 & exit 0",
    );
    let mut sup = Supervisor::new(vec![spec], Vec::new(), BackoffPolicy::default(), sink);
    sup.start_all();
    assert!(run_until(&mut sup, Duration::from_secs(5), |s| s
        .orphans_reaped()
        >= 2));
    sup.stop_all(Duration::from_secs(1));
    // Nothing left to reap: no zombies.
    let r = nix::sys::wait::waitpid(
        nix::unistd::Pid::from_raw(-1),
        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
    );
    assert_eq!(r, Err(nix::errno::Errno::ECHILD));
}

#[test]
fn stops_in_reverse_order_and_kills_the_stubborn() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let order = dir.path().join("order");
    let o = order.display();
    let (sink, lines) = capture();
    let polite = |name: &str| {
        sh(
            name,
            &format!(
                "trap 'echo {name} >> {o}; exit 0' TERM; echo ready; while :; do sleep 0.05; done"
            ),
        )
    };
    let stubborn = sh(
        "stubborn",
        "trap '' TERM; echo ready; while :; do sleep 0.05; done",
    );
    let mut sup = Supervisor::new(
        vec![polite("first"), polite("second"), stubborn],
        Vec::new(),
        fast(),
        sink,
    );
    sup.start_all();
    assert!(run_until(&mut sup, Duration::from_secs(5), |s| {
        ["first", "second", "stubborn"]
            .iter()
            .all(|n| !s.recent_lines(n).is_empty())
    }));
    let started = Instant::now();
    sup.stop_all(Duration::from_millis(500));
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(
        std::fs::read_to_string(&order).expect("order file"),
        "second\nfirst\n"
    );
    let log = snapshot(&lines);
    let pos = |needle: &str| {
        log.iter()
            .position(|l| l.contains(needle))
            .unwrap_or(usize::MAX)
    };
    assert!(
        pos("did not stop within 500ms, killing it") < pos("stopping service second"),
        "{log:#?}"
    );
    assert!(
        pos("service stubborn stopped (was killed by signal 9 (SIGKILL))")
            < pos("stopping service second"),
        "{log:#?}"
    );
    assert!(
        pos("service second stopped (exited with status 0)") < pos("stopping service first"),
        "{log:#?}"
    );
    // No restarts after stop.
    std::thread::sleep(Duration::from_millis(300));
    sup.poll();
    assert_eq!(sup.pid("first"), None);
    assert_eq!(sup.starts("first"), 1);
}

#[test]
fn missing_program_is_retried_not_fatal() {
    let _g = serial();
    let (sink, lines) = capture();
    let spec = ServiceSpec {
        name: "ghost".into(),
        exec: vec!["/nonexistent/ghostd".into()],
        env: BTreeMap::new(),
        after: Vec::new(),
    };
    let mut sup = Supervisor::new(vec![spec], Vec::new(), fast(), sink);
    sup.start_all();
    assert!(run_until(&mut sup, Duration::from_secs(5), |s| s
        .starts("ghost")
        >= 2));
    let log = snapshot(&lines);
    assert!(
        log[0].starts_with("cellos-init: cannot start service ghost (/nonexistent/ghostd): "),
        "{log:#?}"
    );
    assert!(log[0].ends_with("retrying in 100ms"), "{log:#?}");
    sup.stop_all(Duration::from_secs(1));
}

#[test]
fn services_start_with_no_signal_blocked() {
    let _g = serial();
    // As in PID 1: init blocks the signals it waits for; services must not inherit that.
    cellos_init::sys::block_signals();
    let (sink, lines) = capture();
    let spec = sh("mask", "grep SigBlk /proc/self/status; exec sleep 30");
    let mut sup = Supervisor::new(vec![spec], Vec::new(), fast(), sink);
    sup.start_all();
    let seen = run_until(&mut sup, Duration::from_secs(5), |_| {
        snapshot(&lines).iter().any(|l| l.contains("SigBlk"))
    });
    assert!(seen, "no mask line: {:?}", snapshot(&lines));
    assert!(
        snapshot(&lines).contains(&"[mask] SigBlk:\t0000000000000000".to_string()),
        "{:?}",
        snapshot(&lines)
    );
    // And SIGTERM stops it at once, well within the grace time.
    let t = Instant::now();
    sup.stop_all(Duration::from_secs(5));
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "the service ignored SIGTERM"
    );
}

#[test]
fn orphans_exits_are_recorded_for_whoever_started_them() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("dir");
    let pidfile = dir.path().join("orphan.pid");
    let exits = dir.path().join("exits");
    let (sink, _) = capture();
    // The subshell exits at once, so its child is an orphan that comes back to us.
    let script = format!(
        "(sh -c 'echo $$ > {}; sleep 0.3; exit 7' &); exec sleep 30",
        pidfile.display()
    );
    let mut sup = Supervisor::new(vec![sh("parent", &script)], Vec::new(), fast(), sink);
    sup.record_orphan_exits(ExitBook::new(&exits));
    sup.start_all();
    let recorded = || -> Option<String> {
        let pid = std::fs::read_to_string(&pidfile).ok()?;
        std::fs::read_to_string(exits.join(pid.trim())).ok()
    };
    assert!(run_until(&mut sup, Duration::from_secs(10), |_| recorded().is_some()));
    assert_eq!(recorded().as_deref(), Some("exit 7\n"));
    assert!(sup.orphans_reaped() >= 1);
    sup.stop_all(Duration::from_secs(2));
}

#[test]
fn the_exit_book_keeps_the_newest() {
    use std::os::unix::process::ExitStatusExt as _;
    let dir = tempfile::tempdir().expect("dir");
    let mut book = ExitBook::new(dir.path());
    book.record(100, std::process::ExitStatus::from_raw(3 << 8));
    book.record(101, std::process::ExitStatus::from_raw(9));
    let read = |pid: i32| std::fs::read_to_string(dir.path().join(pid.to_string()));
    assert_eq!(read(100).expect("100"), "exit 3\n");
    assert_eq!(read(101).expect("101"), "signal 9\n");
    for pid in 0..ExitBook::KEEP as i32 {
        book.record(1000 + pid, std::process::ExitStatus::from_raw(0));
    }
    assert!(
        read(100).is_err() && read(101).is_err(),
        "the oldest went first"
    );
    assert_eq!(read(1000).expect("kept"), "exit 0\n");
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        ExitBook::KEEP
    );
}
