//! A shared Ethernet segment for several guests: the wire between nodes that tests
//! need for overlay networks, with a capture of everything that crossed it.
//!
//! Each guest's second NIC is a QEMU UDP socket netdev (`-netdev socket,udp=`), which
//! sends every frame as one datagram to the hub and receives frames the same way. The
//! hub is a thread in the test process that repeats each frame to every other port,
//! like an Ethernet hub, and keeps a copy. QEMU's multicast mode would need no hub,
//! but multicast on the host depends on its routes (a CI machine without a default
//! route drops it); unicast on loopback works everywhere, and the hub is also the one
//! place that sees the whole segment, so the capture is complete by construction.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{io, Error, Result};

/// The hub keeps at most this many bytes of frames; later frames are still
/// forwarded but counted as dropped from the capture.
const CAPTURE_LIMIT: usize = 64 << 20;
/// Largest frame QEMU sends (jumbo frames are off; virtio-net's 64 KiB GSO is
/// segmented before it leaves the NIC model).
const MAX_FRAME: usize = 65_536;

/// One frame seen on the segment.
#[derive(Debug, Clone)]
pub struct Frame {
    pub time: SystemTime,
    /// The port (index in attach order) that sent it.
    pub from: usize,
    /// The Ethernet frame, from destination MAC on.
    pub data: Vec<u8>,
}

#[derive(Default)]
struct Capture {
    frames: Vec<Frame>,
    bytes: usize,
    dropped: u64,
}

struct Shared {
    ports: Mutex<Vec<SocketAddr>>,
    capture: Mutex<Capture>,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in the hub thread leaves plain data behind; keep using it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The hub; dropping it stops the thread.
pub struct Segment {
    hub: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A guest's place on a [`Segment`], given to [`crate::Config::segment`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentPort {
    /// Where the hub listens.
    pub hub: SocketAddr,
    /// The UDP address QEMU binds for this guest.
    pub local: SocketAddr,
    /// The guest NIC's MAC address, `52:54:00:xx:xx:xx`.
    pub mac: String,
}

impl Segment {
    /// Starts a hub on a free loopback port.
    pub fn start() -> Result<Segment> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(io("cannot bind the segment hub on", "127.0.0.1"))?;
        let hub = socket
            .local_addr()
            .map_err(io("cannot read the hub's address", "127.0.0.1"))?;
        // Wake up now and then to notice `stop`.
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(io("cannot set a timeout on the hub socket", "127.0.0.1"))?;
        let shared = Arc::new(Shared {
            ports: Mutex::new(Vec::new()),
            capture: Mutex::new(Capture::default()),
            stop: AtomicBool::new(false),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("segment-hub".into())
                .spawn(move || repeat(&socket, &shared))
                .map_err(io("cannot start the hub thread for", "127.0.0.1"))?
        };
        Ok(Segment {
            hub,
            shared,
            thread: Some(thread),
        })
    }

    /// Adds a port for one guest. Its MAC is derived from the port's index, so
    /// guests on one segment never clash.
    pub fn port(&self) -> Result<SegmentPort> {
        // A free port: bind, read it, let QEMU bind it next.
        let probe = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(io("cannot find a free UDP port on", "127.0.0.1"))?;
        let local = probe
            .local_addr()
            .map_err(io("cannot read a probe socket's address", "127.0.0.1"))?;
        drop(probe);
        let mut ports = lock(&self.shared.ports);
        let index = ports.len();
        if index > 0xff {
            return Err(Error::Config("a segment has at most 256 ports".into()));
        }
        ports.push(local);
        Ok(SegmentPort {
            hub: self.hub,
            local,
            mac: format!("52:54:00:77:00:{index:02x}"),
        })
    }

    /// Every frame captured so far.
    pub fn frames(&self) -> Vec<Frame> {
        lock(&self.shared.capture).frames.clone()
    }

    /// Frames not kept because the capture was full.
    pub fn dropped(&self) -> u64 {
        lock(&self.shared.capture).dropped
    }

    /// Writes the capture as a pcap file (Wireshark, tcpdump -r), for a person
    /// looking at a failed test.
    pub fn write_pcap(&self, path: &Path) -> Result<()> {
        let capture = lock(&self.shared.capture);
        let mut out = Vec::with_capacity(24 + capture.bytes + 16 * capture.frames.len());
        // Global header: magic, version 2.4, GMT, accuracy, snaplen, LINKTYPE_ETHERNET.
        out.extend_from_slice(&0xa1b2_c3d4_u32.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes());
        for word in [0u32, 0, MAX_FRAME as u32, 1] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        for f in &capture.frames {
            let t = f.time.duration_since(UNIX_EPOCH).unwrap_or_default();
            let len = f.data.len() as u32;
            for word in [t.as_secs() as u32, t.subsec_micros(), len, len] {
                out.extend_from_slice(&word.to_le_bytes());
            }
            out.extend_from_slice(&f.data);
        }
        std::fs::write(path, out).map_err(io("cannot write the capture", path))
    }
}

/// The hub's loop: each datagram from a known port goes to every other port.
fn repeat(socket: &UdpSocket, shared: &Shared) {
    let mut buf = vec![0u8; MAX_FRAME];
    while !shared.stop.load(Ordering::Relaxed) {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            // Timeouts (to check `stop`) and transient errors alike: go on.
            Err(_) => continue,
        };
        let ports = lock(&shared.ports).clone();
        // Datagrams from anything but a guest are ignored: the hub is on loopback,
        // but a stray sender must not inject frames into a test's wire.
        let Some(index) = ports.iter().position(|p| *p == from) else {
            continue;
        };
        // Captured before it is repeated, so whoever received a frame finds it
        // in the capture.
        {
            let mut capture = lock(&shared.capture);
            if capture.bytes + n > CAPTURE_LIMIT {
                capture.dropped += 1;
            } else {
                capture.bytes += n;
                capture.frames.push(Frame {
                    time: SystemTime::now(),
                    from: index,
                    data: buf[..n].to_vec(),
                });
            }
        }
        for port in ports.iter().filter(|p| **p != from) {
            // A guest that is not up yet (or has stopped) refuses; that is a lost
            // frame on a wire, not an error.
            let _ = socket.send_to(&buf[..n], port);
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two "guests" (plain UDP sockets on the ports' addresses) exchange frames
    /// through the hub, which repeats to the others only and captures each once.
    #[test]
    fn hub_repeats_to_other_ports_and_captures() {
        let seg = Segment::start().unwrap();
        let ports: Vec<SegmentPort> = (0..3).map(|_| seg.port().unwrap()).collect();
        assert_ne!(ports[0].mac, ports[1].mac);
        let socks: Vec<UdpSocket> = ports
            .iter()
            .map(|p| {
                let s = UdpSocket::bind(p.local).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s
            })
            .collect();
        socks[0].send_to(b"frame-from-0", seg.hub).unwrap();
        let mut buf = [0u8; 64];
        for s in &socks[1..] {
            let (n, from) = s.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"frame-from-0");
            assert_eq!(from, seg.hub);
        }
        // The sender does not get its own frame back.
        socks[0]
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(socks[0].recv_from(&mut buf).is_err());
        // A stranger's datagram is neither repeated nor captured.
        let stranger = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        stranger.send_to(b"injected", seg.hub).unwrap();
        socks[2].send_to(b"frame-from-2", seg.hub).unwrap();
        let (n, _) = socks[1].recv_from(&mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            b"frame-from-2",
            "the stranger's frame came first"
        );
        let frames = seg.frames();
        let seen: Vec<(usize, &[u8])> =
            frames.iter().map(|f| (f.from, f.data.as_slice())).collect();
        assert_eq!(
            seen,
            vec![(0, &b"frame-from-0"[..]), (2, &b"frame-from-2"[..])]
        );
        let pcap = tempfile::NamedTempFile::new().unwrap();
        seg.write_pcap(pcap.path()).unwrap();
        let bytes = std::fs::read(pcap.path()).unwrap();
        assert_eq!(&bytes[..4], &0xa1b2_c3d4_u32.to_le_bytes());
        assert_eq!(bytes.len(), 24 + 2 * (16 + 12));
    }
}
