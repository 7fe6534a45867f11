//! The `init` binary: PID 1 of a cellos node, and `/sbin/modprobe` when called by that name.
//!
//! Thin by design: it wires the library's pieces in boot order and runs the signal loop. It
//! never exits as PID 1 and never panics on purpose; should a bug panic anyway, the panic is
//! caught and init falls back to a loop that still reaps and still honours shutdown signals.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cellos_boot::modules::ModuleIndex;
use cellos_boot::{cmdline, env, run, stick};
use cellos_init::backoff::BackoffPolicy;
use cellos_init::console::{chain, line, say};
use cellos_init::kmod::{self, KmodError, Modprobe};
use cellos_init::manifest::{self, ServiceSpec, MANIFEST_PATH};
use cellos_init::power::{self, Action};
use cellos_init::supervisor::{ExitBook, Supervisor};
use cellos_init::{bootcfg, net, sys};

/// Modules the image builder asks for, one name per line.
const MODULES_LOAD: &str = "/etc/cellos/modules.load";
/// Always tried: the ACPI power button reaches us only through these.
const ALWAYS_LOAD: &[&str] = &["button", "evdev"];
/// How long services wait for the network before starting anyway.
const NET_WAIT: Duration = Duration::from_secs(30);
/// Grace between SIGTERM and SIGKILL for each service at shutdown.
const STOP_GRACE: Duration = Duration::from_secs(10);

fn main() {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    if name.as_deref() == Some("modprobe") {
        std::process::exit(modprobe_main(std::env::args().skip(1).collect()));
    }
    sys::block_signals();
    if std::panic::catch_unwind(init_main).is_err() {
        say("internal error (see the panic above); supervision stopped, still reaping and honouring shutdown signals");
    }
    last_resort_loop();
}

/// Now plus `d`, saturating instead of panicking on overflow.
fn later(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d).unwrap_or(now)
}

fn modules_dir() -> PathBuf {
    Path::new("/lib/modules").join(sys::kernel_release())
}

/// `/sbin/modprobe [-q] [-b] [--] name [params...]`, as the kernel calls it. Exit 0 when the
/// module is (now) loaded, 1 otherwise.
fn modprobe_main(args: Vec<String>) -> i32 {
    let mut quiet = false;
    let mut words = Vec::new();
    let mut options_done = false;
    for a in args {
        match a.as_str() {
            "--" if !options_done => options_done = true,
            "-q" | "--quiet" if !options_done => quiet = true,
            "-r" | "--remove" if !options_done => {
                eprintln_safe("modprobe: removing modules is not supported");
                return 1;
            }
            s if s.starts_with('-') && !options_done => {}
            _ => words.push(a),
        }
    }
    let Some((target, params)) = words.split_first() else {
        eprintln_safe("usage: modprobe [-q] [--] <module-or-alias> [params]");
        return 1;
    };
    let index = match ModuleIndex::load(&modules_dir()) {
        Ok(i) => i,
        Err(e) => {
            if !quiet {
                eprintln_safe(&format!("modprobe: {}", chain(&e)));
            }
            return 1;
        }
    };
    let mut mp = Modprobe::new(index, sys::KernelInserter);
    match mp.load(target, &params.join(" ")) {
        Ok(report) if report.failed.is_empty() => 0,
        Ok(report) => {
            for e in report.failed {
                eprintln_safe(&format!("modprobe: {}", chain(&e)));
            }
            1
        }
        Err(e) => {
            if !quiet {
                eprintln_safe(&format!("modprobe: {}", chain(&e)));
            }
            1
        }
    }
}

fn eprintln_safe(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

fn init_main() {
    let start_ms = sys::boottime_ms();
    let t0 = Instant::now();
    let mount_errors = sys::mount_early();
    sys::ensure_console();
    say("started");
    for e in mount_errors {
        say(&e);
    }
    if sys::pid() == 1 {
        if let Err(e) = sys::disable_cad() {
            say(&format!("cannot route ctrl-alt-del to init: {e}"));
        }
    } else if let Err(e) = sys::set_child_subreaper() {
        say(&format!(
            "not PID 1 and cannot become a child subreaper: {e}"
        ));
    }

    if let Err(e) = sys::raise_nofile(sys::NOFILE) {
        say(&format!(
            "cannot raise the open-file limit for services: {e}"
        ));
    }

    let text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (mut cfg, errors) = cmdline::parse(&text);
    for e in errors.iter().filter(|e| !stick::is_boot_key(e)) {
        say(&e.to_string());
    }
    let from_stick = stick::from_stick(&text);
    load_modules(cfg.debug, if from_stick { bootcfg::MODULES } else { &[] });
    let boot_device = if from_stick {
        let (stick_cfg, device) = read_boot_stick(&text);
        cfg = stick_cfg.unwrap_or(cfg);
        device
    } else {
        None
    };
    say(&format!(
        "farm={} ledger={} mode={} debug={} enroll={}",
        cfg.farm.map_or("unset".into(), |f| f.to_string()),
        cfg.ledger.as_deref().unwrap_or("unset"),
        cfg.mode,
        cfg.debug,
        if cfg.enroll.is_some() { "set" } else { "unset" },
    ));

    let watched =
        power::watch_power_button(Path::new("/dev/input"), || sys::signal_self(libc::SIGTERM));
    if watched == 0 {
        say("no input devices: the power button will not be seen");
    }

    let ifaces = net::list_ifaces(Path::new("/sys/class/net"));
    let hostname = ifaces
        .first()
        .map_or_else(|| "cellos".to_string(), |i| net::hostname_for(i.mac));
    if let Err(e) = sys::set_hostname(&hostname) {
        say(&format!("cannot set hostname {hostname}: {e}"));
    }

    let (tx, rx) = mpsc::channel();
    let net_cfg = cfg.net.clone();
    let peer_cfg = cfg.peer.clone();
    let net_started = Instant::now();
    let spawned = std::thread::Builder::new()
        .name("net".into())
        .spawn(move || {
            net::run(net_cfg, peer_cfg, hostname, move |up| {
                let _ = tx.send(up);
            })
        });
    if let Err(e) = spawned {
        say(&format!("cannot start the network thread: {e}"));
    }

    let mut services = read_manifest();
    if cfg.debug {
        services.push(debug_shell());
    }
    // Wait for the network (services need the ledger), but not forever, and stay responsive
    // to shutdown requests meanwhile.
    let deadline = later(NET_WAIT);
    loop {
        if let Ok(up) = rx.try_recv() {
            let gw = up
                .gateway
                .map_or("no gateway".into(), |g| format!("via {g}"));
            say(&format!(
                "network up on {} {}/{} {gw} in {} ms",
                up.iface,
                up.addr,
                up.prefix,
                net_started.elapsed().as_millis()
            ));
            break;
        }
        if Instant::now() >= deadline {
            say(&format!(
                "network not up after {}s, starting services anyway (DHCP keeps trying)",
                NET_WAIT.as_secs()
            ));
            break;
        }
        if let Some(action) =
            sys::wait_signal(Duration::from_millis(100)).and_then(power::action_for_signal)
        {
            let mut sup = Supervisor::new(
                Vec::new(),
                Vec::new(),
                BackoffPolicy::default(),
                Arc::new(line),
            );
            shutdown(&mut sup, action);
        }
    }

    let mut env = cfg.to_env();
    env.push((env::INIT_START.into(), start_ms.to_string()));
    if let Some(disk) = boot_device {
        env.push((env::BOOT_DEVICE.into(), disk));
    }
    if std::env::var_os("PATH").is_none() {
        env.push((
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ));
    }
    let count = services.len();
    let mut sup = Supervisor::new(services, env, BackoffPolicy::default(), Arc::new(line));
    sup.record_orphan_exits(ExitBook::new(run::EXITS_DIR));
    sup.start_all();
    say(&format!(
        "{count} services started, boot took {} ms",
        t0.elapsed().as_millis()
    ));

    loop {
        let timeout = sup.next_deadline().map_or(Duration::from_secs(60), |d| {
            d.saturating_duration_since(Instant::now())
        });
        match sys::wait_signal(timeout.max(Duration::from_millis(1))) {
            Some(sig) => match power::action_for_signal(sig) {
                Some(action) => shutdown(&mut sup, action),
                None => sup.poll(),
            },
            None => sup.poll(),
        }
    }
}

/// After a USB boot: finds the stick, applies its cellos.cfg over the cmdline `text` (the
/// file's values come last, so they win) and records the stick's disk so that nothing takes
/// it for storage. Returns the new config, if the file gave one, and the disk's name.
fn read_boot_stick(text: &str) -> (Option<cmdline::BootConfig>, Option<String>) {
    let out = bootcfg::read_stick(&bootcfg::StickPaths::default(), &mut sys::KernelStick);
    for m in &out.messages {
        say(m);
    }
    // The words were checked by the same parser: only the cmdline's own errors (already
    // said) could come back.
    let cfg = out
        .words
        .map(|words| cmdline::parse(&format!("{text} {words}")).0);
    let disk = out.partition.map(|p| {
        let file = Path::new(run::BOOT_DEVICE_FILE);
        let written = file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(file, format!("{}\n", p.disk)));
        if let Err(e) = written {
            say(&format!("cannot write {}: {e}", file.display()));
        }
        p.disk
    });
    (cfg, disk)
}

/// Loads the hardware's modules (coldplug), the image's list and `extra` ones.
fn load_modules(debug: bool, extra: &[&str]) {
    let started = Instant::now();
    let dir = modules_dir();
    let index = match ModuleIndex::load(&dir) {
        Ok(i) => i,
        Err(e) => {
            say(&format!("no kernel modules will be loaded: {}", chain(&e)));
            return;
        }
    };
    let mut mp = Modprobe::new(index, sys::KernelInserter);
    let mut report = kmod::coldplug(&mut mp, Path::new("/sys/devices"), 8);
    let mut wanted: Vec<String> = ALWAYS_LOAD
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    match std::fs::read_to_string(MODULES_LOAD) {
        Ok(text) => wanted.extend(kmod::parse_module_list(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => say(&format!("cannot read {MODULES_LOAD}: {e}")),
    }
    for name in wanted {
        match mp.load(&name, "") {
            Ok(r) => {
                report.loaded.extend(r.loaded);
                report.failed.extend(r.failed);
            }
            Err(e @ KmodError::NotFound { .. }) => say(&format!("module {name}: {e}")),
            Err(e) => say(&chain(&e)),
        }
    }
    // The explicit modules can bring buses of their own.
    let more = kmod::coldplug(&mut mp, Path::new("/sys/devices"), 4);
    report.loaded.extend(more.loaded);
    report.failed.extend(more.failed);
    for e in &report.failed {
        say(&chain(e));
    }
    say(&format!(
        "loaded {} kernel modules in {} ms",
        report.loaded.len(),
        started.elapsed().as_millis()
    ));
    if debug {
        say(&format!("modules: {}", report.loaded.join(" ")));
    }
}

/// Where the debug shell runs: the second serial port, so the console stays readable.
const DEBUG_TTY: &str = "/dev/ttyS1";

/// With `cellos.debug`, a busybox shell on the second serial port, supervised like a
/// service (restarted if it exits). It is not interactive (no prompt, no echo): it
/// reads a marker line and a command line, runs the command and prints the marker
/// with the command's exit status, which is how `Vm::shell` knows where output ends. Whoever holds that port holds the machine anyway;
/// without `cellos.debug` there is no shell at all.
fn debug_shell() -> ServiceSpec {
    ServiceSpec {
        name: "debug-shell".into(),
        exec: vec![
            "/bin/busybox".into(),
            "sh".into(),
            "-c".into(),
            format!(
                "/bin/busybox stty -F {DEBUG_TTY} -echo -onlcr 115200 2>/dev/null; \
                 while IFS=' ' read -r a b && IFS= read -r line; do \
                 eval \"$line\"; printf '\\n%s%s %s\\n' \"$a\" \"$b\" \"$?\"; \
                 done <{DEBUG_TTY} >{DEBUG_TTY} 2>&1"
            ),
        ],
        env: Default::default(),
        after: Vec::new(),
    }
}

fn read_manifest() -> Vec<ServiceSpec> {
    let text = match std::fs::read_to_string(MANIFEST_PATH) {
        Ok(t) => t,
        Err(e) => {
            say(&format!(
                "cannot read {MANIFEST_PATH}: {e}; no services to start"
            ));
            return Vec::new();
        }
    };
    match manifest::parse(&text) {
        Ok((services, warnings)) => {
            for w in warnings {
                say(&w);
            }
            services
        }
        Err(e) => {
            say(&format!(
                "{MANIFEST_PATH}: {}; no services to start",
                chain(&e)
            ));
            Vec::new()
        }
    }
}

/// Stop everything and power off or reboot. Never returns.
fn shutdown(sup: &mut Supervisor, action: Action) -> ! {
    let what = match action {
        Action::PowerOff => "power off",
        Action::Reboot => "reboot",
    };
    say(&format!("shutdown requested ({what}): stopping services"));
    sup.stop_all(STOP_GRACE);
    if sys::pid() == 1 {
        // Everything left (workloads, orphans): TERM, a moment, then KILL.
        sys::kill_all(libc::SIGTERM);
        let until = later(Duration::from_secs(3));
        while Instant::now() < until {
            sup.poll();
            std::thread::sleep(Duration::from_millis(50));
        }
        sys::kill_all(libc::SIGKILL);
        std::thread::sleep(Duration::from_millis(100));
        sup.poll();
    }
    sys::sync();
    for t in sys::unmount_all() {
        say(&format!("cannot unmount {t}"));
    }
    sys::sync();
    loop {
        say(match action {
            Action::PowerOff => "powering off",
            Action::Reboot => "rebooting",
        });
        let e = sys::power(action == Action::Reboot);
        say(&format!("reboot(2) failed: {e}; retrying in 5s"));
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// After an internal error: keep reaping and still power off or reboot on request.
fn last_resort_loop() -> ! {
    let mut sup = Supervisor::new(
        Vec::new(),
        Vec::new(),
        BackoffPolicy::default(),
        Arc::new(line),
    );
    loop {
        match sys::wait_signal(Duration::from_secs(60)).and_then(power::action_for_signal) {
            Some(action) => shutdown(&mut sup, action),
            None => sup.poll(),
        }
    }
}
