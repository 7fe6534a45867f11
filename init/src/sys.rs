//! Every syscall init makes: mounts, module insertion, netlink, sockets, signals, hostname,
//! shutdown. Kept small and free of policy so the logic elsewhere can be tested on the host.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};

use crate::kmod::ModuleInserter;
use crate::netlink;
use cellos_dhcp::Transport;

/// One filesystem init mounts early.
struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: &'static str,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

const MOUNTS: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "gid=5,mode=0620,ptmxmode=0666",
    },
    Mount {
        source: "tmpfs",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=0755",
    },
    Mount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
    Mount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "nsdelegate",
    },
];

/// Mount the kernel filesystems. Already-mounted targets (EBUSY) are fine. Returns one
/// message per failure.
pub fn mount_early() -> Vec<String> {
    let mut errors = Vec::new();
    for m in MOUNTS {
        if let Err(e) = std::fs::create_dir_all(m.target) {
            errors.push(format!("cannot create {}: {e}", m.target));
            continue;
        }
        let data = (!m.data.is_empty()).then_some(m.data);
        match mount(Some(m.source), m.target, Some(m.fstype), m.flags, data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => errors.push(format!("cannot mount {} on {}: {e}", m.fstype, m.target)),
        }
    }
    errors
}

/// If the kernel gave us no usable stdout (no `/dev/console` in the initramfs), attach
/// stdin/stdout/stderr to `/dev/console` now that devtmpfs is there.
pub fn ensure_console() {
    // SAFETY: F_GETFD only queries descriptor flags; it touches no memory.
    let stdout_ok = unsafe { libc::fcntl(1, libc::F_GETFD) } >= 0;
    if stdout_ok {
        return;
    }
    let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors; `console` stays open for the call.
        unsafe { libc::dup2(console.as_raw_fd(), fd) };
    }
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Loads modules with `finit_module(2)`.
pub struct KernelInserter;

impl ModuleInserter for KernelInserter {
    fn insert(&mut self, path: &Path, params: &str) -> io::Result<()> {
        let file = File::open(path)?;
        let params =
            CString::new(params).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: finit_module reads the open fd and the NUL-terminated params string, both of
        // which outlive the call; flags 0.
        let rc =
            unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Set the hostname.
pub fn set_hostname(name: &str) -> io::Result<()> {
    nix::unistd::sethostname(name).map_err(io::Error::from)
}

/// A NETLINK_ROUTE socket for link, address and route changes.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// Open the socket.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: SO_RCVTIMEO takes a timeval, passed by pointer with its size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(Netlink { fd, seq: 1 })
    }

    fn request(&mut self, build: impl FnOnce(u32) -> Vec<u8>) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let msg = build(seq);
        // SAFETY: a zeroed sockaddr_nl with the family set addresses the kernel (pid 0).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: msg and addr are valid for the given lengths during the call.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 8192];
        for _ in 0..16 {
            // SAFETY: buf is writable for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let got = buf.get(..n as usize).unwrap_or_default();
            match netlink::ack_for(got, seq) {
                Some(0) => return Ok(()),
                Some(errno) => return Err(io::Error::from_raw_os_error(errno)),
                None => continue,
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no netlink acknowledgement",
        ))
    }

    /// Set a link up.
    pub fn link_up(&mut self, index: u32) -> io::Result<()> {
        self.request(|seq| netlink::link_up(seq, index))
    }

    /// Add (or replace) an IPv4 address.
    pub fn add_addr(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        self.request(|seq| netlink::add_addr(seq, index, addr, prefix))
    }

    /// Remove an IPv4 address.
    pub fn del_addr(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        self.request(|seq| netlink::del_addr(seq, index, addr, prefix))
    }

    /// Add (or replace) the default route.
    pub fn default_route(&mut self, index: u32, gw: Ipv4Addr, onlink: bool) -> io::Result<()> {
        self.request(|seq| netlink::default_route(seq, index, gw, onlink))
    }
}

/// DHCP over a UDP socket on port 68 bound to one interface (see `dhcp` for why UDP).
pub struct UdpTransport {
    socket: UdpSocket,
}

impl UdpTransport {
    /// Bind to `0.0.0.0:68` on `iface` with broadcast allowed.
    pub fn bind(iface: &str) -> io::Result<Self> {
        let fd = socket::socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        socket::setsockopt(&fd, sockopt::Broadcast, &true)?;
        socket::setsockopt(&fd, sockopt::BindToDevice, &std::ffi::OsString::from(iface))?;
        socket::bind(fd.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, 68))?;
        Ok(UdpTransport {
            socket: UdpSocket::from(fd),
        })
    }
}

impl Transport for UdpTransport {
    fn send(&mut self, packet: &[u8], dest: Ipv4Addr) -> io::Result<()> {
        self.socket
            .send_to(packet, SocketAddrV4::new(dest, 67))
            .map(|_| ())
    }

    fn recv(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut buf = vec![0u8; 1500];
        match self.socket.recv(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Ok(Some(buf))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The signals init acts on; blocked in every thread and taken with [`wait_signal`].
const HANDLED: [libc::c_int; 5] = [
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HANDLED {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Block the handled signals. Call before starting any thread so all threads inherit the
/// mask; the main loop then takes them synchronously. (Children get an empty mask: std
/// resets it before exec.) Blocked signals are delivered to PID 1 even without handlers.
pub fn block_signals() {
    let set = handled_set();
    // SAFETY: sets this thread's mask from a valid sigset_t.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Unblocks every signal in the calling thread. Async-signal-safe: used between fork and
/// exec so services start with an empty mask.
pub fn unblock_all_signals() -> io::Result<()> {
    // SAFETY: sigemptyset initialises a local sigset_t; sigprocmask reads it and writes
    // no old mask.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Wait up to `timeout` for a handled signal; `None` on timeout or interruption.
pub fn wait_signal(timeout: Duration) -> Option<libc::c_int> {
    let set = handled_set();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: set and ts are valid for the call; siginfo output is not requested.
    let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

/// Ask the kernel to send SIGINT to init on ctrl-alt-del instead of rebooting at once.
pub fn disable_cad() -> io::Result<()> {
    nix::sys::reboot::set_cad_enabled(false).map_err(io::Error::from)
}

/// Open files every service may have. The kernel's default soft limit of 1,024 lets a
/// few hundred idle TCP connections take a node server down (EMFILE); servers cap
/// their connections below this instead.
pub const NOFILE: u64 = 1 << 20;

/// Raises our open-file limit (soft and hard) to `want`, or as far as the kernel's
/// `fs.nr_open` and our privileges allow; services inherit it. Returns the soft limit
/// now in force.
pub fn raise_nofile(want: u64) -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(want);
    let target = want.min(nr_open);
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft >= target {
        return Ok(soft);
    }
    if setrlimit(Resource::RLIMIT_NOFILE, target, target.max(hard)).is_ok() {
        return Ok(target);
    }
    // Without CAP_SYS_RESOURCE only the soft limit can move, up to the hard one.
    let soft = target.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).map_err(io::Error::from)?;
    Ok(soft)
}

/// Become the reaper of orphaned descendants (for running the supervisor outside PID 1).
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Send a signal to ourselves (the power-button watcher uses this to join the signal path).
pub fn signal_self(sig: libc::c_int) {
    // SAFETY: kill(2) on our own pid with a valid signal number.
    unsafe { libc::kill(libc::getpid(), sig) };
}

/// Our pid (1 when we are the real init).
pub fn pid() -> i32 {
    std::process::id() as i32
}

/// CLOCK_BOOTTIME in milliseconds: time since the kernel started, suspend included.
pub fn boottime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the local timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1000) + (ts.tv_nsec as u64) / 1_000_000
}

/// Signal every process but ourselves (`kill(-1, sig)`). Only for PID 1 at shutdown.
pub fn kill_all(sig: libc::c_int) {
    // SAFETY: kill(2) with pid -1 and a valid signal number.
    unsafe { libc::kill(-1, sig) };
}

/// Flush filesystems.
pub fn sync() {
    nix::unistd::sync();
}

/// Unmount everything in `/proc/mounts` but the root and the kernel filesystems, deepest
/// first, lazily where busy. Returns the mount points that could not be unmounted.
pub fn unmount_all() -> Vec<String> {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return Vec::new();
    };
    let keep = ["/", "/proc", "/sys", "/dev"];
    let mut targets: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|t| t.replace("\\040", " "))
        .filter(|t| !keep.contains(&t.as_str()))
        .collect();
    targets.reverse();
    let mut failed = Vec::new();
    for t in targets {
        if umount2(t.as_str(), MntFlags::empty()).is_err()
            && umount2(t.as_str(), MntFlags::MNT_DETACH).is_err()
        {
            failed.push(t);
        }
    }
    failed
}

/// Mounts and unmounts the boot stick's FAT partition for [`crate::bootcfg`]: read-only,
/// never executable, with the code pages the image carries.
pub struct KernelStick;

impl crate::bootcfg::Stick for KernelStick {
    fn mount(&mut self, device: &Path, at: &Path) -> io::Result<()> {
        let flags = MsFlags::MS_RDONLY | NOSUID_NODEV_NOEXEC;
        mount(
            Some(device),
            at,
            Some("vfat"),
            flags,
            Some(crate::bootcfg::MOUNT_OPTIONS),
        )
        .map_err(io::Error::from)
    }

    fn unmount(&mut self, at: &Path) -> io::Result<()> {
        umount2(at, MntFlags::empty()).map_err(io::Error::from)
    }
}

/// Power off (`reboot == false`) or reboot. Returns only on failure.
pub fn power(reboot: bool) -> io::Error {
    let mode = if reboot {
        nix::sys::reboot::RebootMode::RB_AUTOBOOT
    } else {
        nix::sys::reboot::RebootMode::RB_POWER_OFF
    };
    match nix::sys::reboot::reboot(mode) {
        Err(e) => io::Error::from(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_raised_and_inherited() {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        // Start from the kernel's default soft limit.
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        setrlimit(Resource::RLIMIT_NOFILE, 1024, hard).expect("lower the soft limit");
        let got = raise_nofile(NOFILE).expect("raise");
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        assert_eq!(soft, got);
        // PID 1 (CAP_SYS_RESOURCE) gets the whole limit; a process without the
        // capability (a container running the tests) at least its hard limit.
        assert_eq!(soft, hard.min(NOFILE), "soft {soft}, hard {hard}");
        assert!(soft > 1024);
        let child = std::process::Command::new("sh")
            .args(["-c", "ulimit -n"])
            .output()
            .expect("sh");
        let child: u64 = String::from_utf8_lossy(&child.stdout)
            .trim()
            .parse()
            .expect("a number");
        assert_eq!(child, soft, "a child inherits the limit");
    }
}
