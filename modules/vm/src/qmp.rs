//! A minimal QMP client: connect, negotiate capabilities, run one command.
//! One connection per command keeps no state between calls; QEMU's QMP
//! server accepts a new client as soon as the previous one is gone. The node's VMs
//! and the test harness's QEMU (`cellos-qemu`) both speak through it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
#[error("QMP on {}: {reason}", socket.display())]
pub struct QmpError {
    pub socket: std::path::PathBuf,
    pub reason: String,
}

type Result<T> = std::result::Result<T, QmpError>;

/// Runs `command` (e.g. `system_powerdown`) and returns its `return` value.
pub fn execute(socket: &Path, command: &str) -> Result<Value> {
    execute_with(socket, command, None)
}

/// Runs `command` with `arguments` (a JSON object) and returns its `return` value.
pub fn execute_with(socket: &Path, command: &str, arguments: Option<Value>) -> Result<Value> {
    let fail = |reason: String| QmpError {
        socket: socket.to_path_buf(),
        reason,
    };
    // QEMU creates the socket while starting up: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                return Err(fail(format!("cannot connect: {e}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| fail(e.to_string()))?;
    let mut writer = stream.try_clone().map_err(|e| fail(e.to_string()))?;
    let mut reader = BufReader::new(stream);
    let mut read = || -> Result<Value> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| fail(format!("read: {e}")))?;
            if n == 0 {
                return Err(fail("connection closed".into()));
            }
            let value: Value = serde_json::from_str(&line)
                .map_err(|e| fail(format!("bad reply {line:?}: {e}")))?;
            // Asynchronous events may arrive at any time; they answer nothing.
            if value.get("event").is_none() {
                return Ok(value);
            }
        }
    };
    let greeting = read()?;
    if greeting.get("QMP").is_none() {
        return Err(fail(format!("unexpected greeting {greeting}")));
    }
    let mut call = |name: &str, arguments: Option<Value>| -> Result<Value> {
        let request = match arguments {
            Some(a) => serde_json::json!({ "execute": name, "arguments": a }),
            None => serde_json::json!({ "execute": name }),
        };
        writeln!(writer, "{request}").map_err(|e| fail(format!("write: {e}")))?;
        let reply = read()?;
        match (reply.get("return"), reply.get("error")) {
            (Some(value), _) => Ok(value.clone()),
            (None, Some(error)) => Err(fail(format!("{name} failed: {error}"))),
            _ => Err(fail(format!("unexpected reply to {name}: {reply}"))),
        }
    };
    call("qmp_capabilities", None)?;
    call(command, arguments)
}
