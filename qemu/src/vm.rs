//! A running QEMU: start it, wait for console lines like `expect`, power it
//! off over QMP, and never leave it running (Drop kills it).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use crate::args::{self, AttachedDisk};
use crate::config::{Accel, Boot, Config, DiskSource};
use crate::error::{io, Error, Result};
use crate::sys;

/// How many console lines an error carries.
const TAIL_LINES: usize = 60;
const POLL: Duration = Duration::from_millis(50);

/// Something a console line can match: a substring (`&str`, `String`) or a
/// regular expression.
pub trait Pattern {
    fn matches(&self, line: &str) -> bool;
    /// How the pattern reads in an error message.
    fn describe(&self) -> String;
}

impl Pattern for str {
    fn matches(&self, line: &str) -> bool {
        line.contains(self)
    }
    fn describe(&self) -> String {
        format!("{self:?}")
    }
}

impl Pattern for String {
    fn matches(&self, line: &str) -> bool {
        line.contains(self.as_str())
    }
    fn describe(&self) -> String {
        format!("{self:?}")
    }
}

impl Pattern for regex::Regex {
    fn matches(&self, line: &str) -> bool {
        self.is_match(line)
    }
    fn describe(&self) -> String {
        format!("/{}/", self.as_str())
    }
}

/// The VM's directory: ours to delete, or the caller's to keep.
enum WorkDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl WorkDir {
    fn path(&self) -> &Path {
        match self {
            WorkDir::Temp(t) => t.path(),
            WorkDir::Kept(p) => p,
        }
    }
}

pub struct Vm {
    child: Child,
    exit: Option<ExitStatus>,
    /// Byte offset in console.log up to which `wait_for` has consumed lines.
    cursor: usize,
    /// Commands sent to the guest shell, for unique end markers.
    shell_seq: u64,
    disks: Vec<PathBuf>,
    accel: Accel,
    started: Instant,
    // Last, so the directory outlives the process that writes into it.
    work: WorkDir,
}

/// `qcow2` if the image starts with QEMU's qcow magic, else `raw`.
fn image_format(path: &Path) -> Result<&'static str> {
    let mut magic = [0u8; 4];
    let mut file = fs::File::open(path).map_err(io("cannot open disk image", path))?;
    Ok(match file.read_exact(&mut magic) {
        Ok(()) if &magic == b"QFI\xfb" => "qcow2",
        _ => "raw",
    })
}

/// Finds the first line of `new` matching `pattern`. Returns how many bytes
/// are consumed (through the matching line, else every complete line) and
/// the line without its line ending. An unterminated last line is matched
/// but not consumed unless it matches.
fn scan(new: &[u8], pattern: &(impl Pattern + ?Sized)) -> (usize, Option<String>) {
    let mut consumed = 0;
    for chunk in new.split_inclusive(|&b| b == b'\n') {
        let text = String::from_utf8_lossy(chunk).replace(['\r', '\n'], "");
        if pattern.matches(&text) {
            return (consumed + chunk.len(), Some(text));
        }
        if !chunk.ends_with(b"\n") {
            break;
        }
        consumed += chunk.len();
    }
    (consumed, None)
}

impl Vm {
    /// Creates the disks and starts QEMU. Returns once the process runs;
    /// use [`Vm::wait_for`] to wait for the guest.
    pub fn start(config: Config) -> Result<Vm> {
        let work = match &config.work_dir {
            Some(dir) => {
                fs::create_dir_all(dir).map_err(io("cannot create work dir", dir))?;
                WorkDir::Kept(dir.clone())
            }
            None => WorkDir::Temp(
                tempfile::Builder::new()
                    .prefix("cellos-vm-")
                    .tempdir()
                    .map_err(io(
                        "cannot create a temporary work dir in",
                        std::env::temp_dir(),
                    ))?,
            ),
        };
        let dir = work.path();
        if let Boot::Usb { image } = &config.boot {
            let copy = dir.join(args::USB_COPY);
            fs::copy(image, &copy).map_err(io("cannot copy the USB image to", &copy))?;
        }
        let mut attached = Vec::new();
        for (i, disk) in config.disks.iter().enumerate() {
            let path = match &disk.source {
                DiskSource::New { size } => {
                    let path = dir.join(format!("disk{i}.qcow2"));
                    sys::create_qcow2(&path, *size)?;
                    path
                }
                DiskSource::Existing(path) => path.clone(),
            };
            let format = image_format(&path)?;
            attached.push(AttachedDisk {
                path,
                format,
                kind: disk.kind,
            });
        }
        let accel = match config.accel {
            Accel::Auto if sys::kvm_usable() => Accel::Kvm,
            Accel::Auto => Accel::Tcg,
            other => other,
        };
        let argv = args::argv(&config, accel, dir, &attached)?;
        let console = dir.join("console.log");
        // A stale log from an earlier boot in a kept dir would satisfy waits.
        fs::write(&console, b"").map_err(io("cannot create", &console))?;
        let _ = fs::remove_file(dir.join("qmp.sock"));
        let child = sys::spawn_qemu(&argv, &dir.join("qemu.log"))?;
        Ok(Vm {
            child,
            exit: None,
            cursor: 0,
            shell_seq: 0,
            disks: attached.into_iter().map(|d| d.path).collect(),
            accel,
            started: Instant::now(),
            work,
        })
    }

    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// Disk image paths in attach order (to reboot onto the same disks).
    pub fn disks(&self) -> &[PathBuf] {
        &self.disks
    }

    /// The accelerator QEMU was started with (`Auto` resolved).
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// Time since QEMU was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn console_path(&self) -> PathBuf {
        self.work.path().join("console.log")
    }

    /// Everything the guest wrote to its serial console so far.
    pub fn console(&self) -> String {
        let raw = fs::read(self.console_path()).unwrap_or_default();
        String::from_utf8_lossy(&raw).replace('\r', "")
    }

    fn tail(&self) -> String {
        let console = self.console();
        let lines: Vec<&str> = console.lines().collect();
        lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
    }

    fn qemu_log(&self) -> String {
        fs::read_to_string(self.work.path().join("qemu.log"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// QEMU's exit status if it has exited.
    fn exited(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().map_err(io(
                "cannot wait for QEMU in",
                self.work.path().to_path_buf(),
            ))?;
        }
        Ok(self.exit)
    }

    /// Scans console lines after the cursor for `pattern`, consuming them.
    fn scan(&mut self, pattern: &(impl Pattern + ?Sized)) -> Option<String> {
        let raw = fs::read(self.console_path()).unwrap_or_default();
        let (consumed, found) = scan(raw.get(self.cursor..).unwrap_or_default(), pattern);
        self.cursor += consumed;
        found
    }

    /// Waits until a console line matches `pattern` and returns that line.
    /// Fails with the console's last lines on timeout, or at once if QEMU
    /// exits first.
    pub fn wait_for(
        &mut self,
        pattern: &(impl Pattern + ?Sized),
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Check exit before scanning so output written just before the
            // exit is still seen.
            let exited = self.exited()?;
            if let Some(line) = self.scan(pattern) {
                return Ok(line);
            }
            if let Some(status) = exited {
                return Err(Error::Exited {
                    status,
                    pattern: pattern.describe(),
                    qemu_log: self.qemu_log(),
                    tail: self.tail(),
                });
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    pattern: pattern.describe(),
                    timeout,
                    tail: self.tail(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Runs `command` (one line of shell) in the guest's debug shell (busybox `sh` on
    /// ttyS1, which init starts when the node boots with `cellos.debug`) and returns
    /// its exit status and output. For tests: kill a service, look at a namespace.
    pub fn shell(&mut self, command: &str, timeout: Duration) -> Result<(i32, String)> {
        use std::io::{Read, Write};
        let socket = self.work.path().join("shell.sock");
        let fail = |reason: String| Error::Shell {
            socket: socket.clone(),
            reason,
        };
        let mut stream = std::os::unix::net::UnixStream::connect(&socket)
            .map_err(|e| fail(format!("cannot connect: {e}")))?;
        stream
            .set_read_timeout(Some(POLL))
            .map_err(|e| fail(e.to_string()))?;
        self.shell_seq += 1;
        let end = format!("@@cellos-end-{}@@", self.shell_seq);
        // The guest's shell reads the marker (in two halves, so that an echo of the
        // input never matches) and one command line, and prints the marker and the
        // command's status after its output.
        if command.contains('\n') {
            return Err(fail("one command line at a time".into()));
        }
        let (a, b) = end.split_at(5);
        let script = format!("{a} {b}\n{command}\n");
        stream
            .write_all(script.as_bytes())
            .map_err(|e| fail(format!("cannot write: {e}")))?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&out).replace('\r', "");
            if let Some(at) = text.find(&end) {
                let status = text[at + end.len()..]
                    .split_whitespace()
                    .next()
                    .and_then(|s| s.parse().ok());
                if let Some(status) = status {
                    let output = text[..at].trim_end_matches('\n').to_string();
                    return Ok((status, output));
                }
            }
            if Instant::now() > deadline {
                return Err(fail(format!(
                    "no answer to {command:?} within {timeout:?}; got {text:?}"
                )));
            }
            match stream.read(&mut buf) {
                Ok(0) => return Err(fail("the guest closed the shell".into())),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(fail(format!("cannot read: {e}"))),
            }
        }
    }

    /// Presses the ACPI power button (QMP `system_powerdown`): the guest's
    /// init should stop its services and power off.
    pub fn powerdown(&mut self) -> Result<()> {
        cellos_vm::qmp::execute(&self.work.path().join("qmp.sock"), "system_powerdown")?;
        Ok(())
    }

    /// Saves what the guest's display shows as a PNG at `path` (QMP `screendump`);
    /// needs [`Config::vga`](crate::Config::vga).
    pub fn screendump(&mut self, path: &Path) -> Result<()> {
        let arguments = serde_json::json!({ "filename": path, "format": "png" });
        cellos_vm::qmp::execute_with(
            &self.work.path().join("qmp.sock"),
            "screendump",
            Some(arguments),
        )?;
        Ok(())
    }

    /// Ends QEMU at once (QMP `quit`), like pulling the plug.
    pub fn quit(&mut self) -> Result<ExitStatus> {
        // QEMU may close the socket before replying: the exit is what counts.
        let sent = cellos_vm::qmp::execute(&self.work.path().join("qmp.sock"), "quit");
        match self.wait_exit(Duration::from_secs(10)) {
            Ok(status) => Ok(status),
            Err(e) => sent.map_err(Error::from).and(Err(e)),
        }
    }

    /// Waits for QEMU to exit (after a guest power-off or a panic with
    /// `-no-reboot`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(Error::StillRunning {
                    timeout,
                    tail: self.tail(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Kills QEMU (SIGKILL) and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        if self.exited()?.is_none() {
            let path = self.work.path().to_path_buf();
            self.child
                .kill()
                .map_err(io("cannot kill QEMU in", path.clone()))?;
            self.exit = Some(
                self.child
                    .wait()
                    .map_err(io("cannot wait for QEMU in", path))?,
            );
        }
        Ok(())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Nothing to report to in drop; the process is gone either way.
        let _ = self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_consumes_through_the_matching_line() {
        let console = b"booting\r\ncellos: up 1.2s\r\nnext line\r\npart";
        let (n, line) = scan(&console[..], "up ");
        assert_eq!(line.as_deref(), Some("cellos: up 1.2s"));
        assert_eq!(&console[n..], b"next line\r\npart");
        let re = regex::Regex::new(r"^par").unwrap();
        let (m, line) = scan(&console[n..], &re);
        assert_eq!((m, line.as_deref()), (15, Some("part")));
    }

    #[test]
    fn scan_keeps_an_unterminated_line_it_did_not_match() {
        let (n, line) = scan(&b"one\ntw"[..], "two");
        assert_eq!((n, line), (4, None));
        let (n, line) = scan(&b"tw"[..], &"two".to_string());
        assert_eq!((n, line), (0, None));
    }

    #[test]
    fn image_format_is_sniffed() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw.img");
        fs::write(&raw, [0u8; 512]).unwrap();
        assert_eq!(image_format(&raw).unwrap(), "raw");
        let qcow = dir.path().join("d.qcow2");
        sys::create_qcow2(&qcow, 1 << 20).unwrap();
        assert_eq!(image_format(&qcow).unwrap(), "qcow2");
    }
}
