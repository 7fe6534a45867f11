//! cellos-dhcp: a DHCPv4 client: DISCOVER, OFFER, REQUEST, ACK, and renewal.
//!
//! A crate of its own (not a module of init) so that the fuzzer drives it with hostile
//! servers' packets without depending on the PID 1 crate.
//!
//! Packets are built and parsed with `dhcproto`; the network is behind [`Transport`] so the
//! whole exchange is tested against a fake server. In init the transport is a UDP socket on
//! port 68 bound to the uplink with `SO_BINDTODEVICE` and `SO_BROADCAST` (see `sys`): before
//! the interface has an address Linux still sends to 255.255.255.255 out of the bound device
//! and delivers broadcast replies to it. We set the BROADCAST flag in our requests so servers
//! broadcast their answers (a unicast to an address we do not have yet would be dropped);
//! QEMU's slirp broadcasts anyway. A raw AF_PACKET socket would also cope with servers that
//! ignore the flag, at the price of building IP and UDP headers by hand; the UDP socket keeps
//! the code small and the kernel does checksums and filtering.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};

/// How the client reaches the server.
pub trait Transport {
    /// Send a packet to `dest`, port 67 (255.255.255.255 for broadcast).
    fn send(&mut self, packet: &[u8], dest: Ipv4Addr) -> std::io::Result<()>;
    /// Wait up to `timeout` for one packet; `Ok(None)` on timeout.
    fn recv(&mut self, timeout: Duration) -> std::io::Result<Option<Vec<u8>>>;
}

/// Why no lease was obtained.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// Sending or receiving failed.
    #[error("DHCP I/O failed")]
    Io(#[from] std::io::Error),
    /// A packet could not be encoded.
    #[error("cannot encode a DHCP packet: {0}")]
    Encode(String),
    /// No answer in time.
    #[error("no DHCP {0} received")]
    Timeout(&'static str),
    /// The server refused our request.
    #[error("DHCP server {0} sent NAK")]
    Nak(Ipv4Addr),
}

/// An accepted lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Our address.
    pub addr: Ipv4Addr,
    /// Prefix length from the subnet mask option (24 if absent).
    pub prefix: u8,
    /// First router, if any.
    pub router: Option<Ipv4Addr>,
    /// Resolvers, in the server's order.
    pub dns: Vec<Ipv4Addr>,
    /// Search domain, if any.
    pub domain: Option<String>,
    /// The server that granted the lease.
    pub server: Ipv4Addr,
    /// Lease duration.
    pub lease_time: Duration,
    /// Renewal time T1 (default half the lease).
    pub t1: Duration,
    /// Rebinding time T2 (default 7/8 of the lease).
    pub t2: Duration,
}

/// Per-message wait and the number of DISCOVERs per [`acquire`] call.
const REPLY_WAIT: Duration = Duration::from_secs(3);
const DISCOVER_TRIES: u32 = 3;

fn base(xid: u32, mac: [u8; 6], ciaddr: Ipv4Addr, broadcast: bool) -> Message {
    let mut m = Message::new_with_id(
        xid,
        ciaddr,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    if broadcast {
        m.set_flags(Flags::default().set_broadcast());
    }
    let mut client_id = vec![1u8]; // hardware type: Ethernet
    client_id.extend_from_slice(&mac);
    let opts = m.opts_mut();
    opts.insert(DhcpOption::ClientIdentifier(client_id));
    opts.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::DomainName,
        OptionCode::AddressLeaseTime,
        OptionCode::Renewal,
        OptionCode::Rebinding,
    ]));
    m
}

fn encode(m: &Message) -> Result<Vec<u8>, DhcpError> {
    m.to_vec().map_err(|e| DhcpError::Encode(e.to_string()))
}

fn discover(xid: u32, mac: [u8; 6], hostname: &str) -> Result<Vec<u8>, DhcpError> {
    let mut m = base(xid, mac, Ipv4Addr::UNSPECIFIED, true);
    m.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    if !hostname.is_empty() {
        m.opts_mut()
            .insert(DhcpOption::Hostname(hostname.to_string()));
    }
    encode(&m)
}

/// REQUEST in SELECTING state (`server` set) or RENEWING/REBINDING (`ciaddr` set).
fn request(
    xid: u32,
    mac: [u8; 6],
    hostname: &str,
    selecting: Option<(Ipv4Addr, Ipv4Addr)>,
    ciaddr: Ipv4Addr,
) -> Result<Vec<u8>, DhcpError> {
    let mut m = base(xid, mac, ciaddr, selecting.is_some());
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(MessageType::Request));
    if let Some((addr, server)) = selecting {
        opts.insert(DhcpOption::RequestedIpAddress(addr));
        opts.insert(DhcpOption::ServerIdentifier(server));
    }
    if !hostname.is_empty() {
        opts.insert(DhcpOption::Hostname(hostname.to_string()));
    }
    encode(&m)
}

/// A server reply that belongs to us.
struct Reply {
    kind: MessageType,
    lease: Lease,
}

fn parse_reply(packet: &[u8], xid: u32, mac: [u8; 6]) -> Option<Reply> {
    let m = Message::decode(&mut Decoder::new(packet)).ok()?;
    // `chaddr()` slices the 16-byte field by the packet's own `hlen`, and panics
    // when a server claims more than 16 (found by fuzzing: it took PID 1 down).
    if m.xid() != xid || m.hlen() > 16 || m.chaddr().get(..6) != Some(&mac[..]) {
        return None;
    }
    let opts = m.opts();
    let kind = opts.msg_type()?;
    let server = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => m.siaddr(),
    };
    let prefix = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => u32::from(*mask).leading_ones() as u8,
        _ => 24,
    };
    let router = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied(),
        _ => None,
    };
    let dns = match opts.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d.clone(),
        _ => Vec::new(),
    };
    let domain = match opts.get(OptionCode::DomainName) {
        Some(DhcpOption::DomainName(d)) => search_domain(d),
        _ => None,
    };
    let secs = |code, default: u64| match opts.get(code) {
        Some(DhcpOption::AddressLeaseTime(s))
        | Some(DhcpOption::Renewal(s))
        | Some(DhcpOption::Rebinding(s)) => Duration::from_secs(u64::from(*s)),
        _ => Duration::from_secs(default),
    };
    let lease_time = secs(OptionCode::AddressLeaseTime, 86_400);
    let lease_secs = lease_time.as_secs();
    let t1 = secs(OptionCode::Renewal, lease_secs / 2).min(lease_time);
    let t2 = secs(OptionCode::Rebinding, lease_secs * 7 / 8).clamp(t1, lease_time);
    Some(Reply {
        kind,
        lease: Lease {
            addr: m.yiaddr(),
            prefix,
            router,
            dns,
            domain,
            server,
            lease_time,
            t1,
            t2,
        },
    })
}

/// The domain option as a resolv.conf `search` list: DNS names (letters, digits, `-`,
/// `_`, `.`) separated by spaces, trailing NULs (some servers send C strings) dropped.
/// Anything else is refused: a newline would let the server add resolv.conf lines of
/// its choosing (found by fuzzing).
fn search_domain(d: &str) -> Option<String> {
    let d = d.trim_end_matches('\0').trim();
    let name = |w: &str| {
        w.len() <= 253
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    (!d.is_empty() && d.split(' ').all(|w| !w.is_empty() && name(w))).then(|| d.to_string())
}

/// Wait for a reply of one of `kinds` to `xid` until `wait` has passed.
fn wait_for<T: Transport>(
    t: &mut T,
    xid: u32,
    mac: [u8; 6],
    kinds: &[MessageType],
    wait: Duration,
) -> Result<Option<Reply>, DhcpError> {
    let start = Instant::now();
    loop {
        let left = wait.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Ok(None);
        }
        let Some(packet) = t.recv(left)? else {
            return Ok(None);
        };
        if let Some(r) = parse_reply(&packet, xid, mac) {
            if kinds.contains(&r.kind) {
                return Ok(Some(r));
            }
        }
    }
}

/// Obtain a lease from scratch: DISCOVER (a few tries), take the first OFFER, REQUEST it, and
/// return the ACKed lease.
pub fn acquire<T: Transport>(
    t: &mut T,
    mac: [u8; 6],
    xid: u32,
    hostname: &str,
) -> Result<Lease, DhcpError> {
    let mut offer = None;
    for _ in 0..DISCOVER_TRIES {
        t.send(&discover(xid, mac, hostname)?, Ipv4Addr::BROADCAST)?;
        offer = wait_for(t, xid, mac, &[MessageType::Offer], REPLY_WAIT)?;
        if offer.is_some() {
            break;
        }
    }
    let offer = offer.ok_or(DhcpError::Timeout("OFFER"))?;
    let selecting = Some((offer.lease.addr, offer.lease.server));
    let req = request(xid, mac, hostname, selecting, Ipv4Addr::UNSPECIFIED)?;
    t.send(&req, Ipv4Addr::BROADCAST)?;
    let kinds = [MessageType::Ack, MessageType::Nak];
    match wait_for(t, xid, mac, &kinds, REPLY_WAIT)? {
        Some(r) if r.kind == MessageType::Ack => Ok(r.lease),
        Some(r) => Err(DhcpError::Nak(r.lease.server)),
        None => Err(DhcpError::Timeout("ACK")),
    }
}

/// Extend `lease`: a REQUEST with our address as ciaddr, unicast to the server (renewing, at
/// T1) or broadcast (rebinding, at T2).
pub fn renew<T: Transport>(
    t: &mut T,
    mac: [u8; 6],
    xid: u32,
    hostname: &str,
    lease: &Lease,
    rebinding: bool,
) -> Result<Lease, DhcpError> {
    let req = request(xid, mac, hostname, None, lease.addr)?;
    let dest = if rebinding {
        Ipv4Addr::BROADCAST
    } else {
        lease.server
    };
    t.send(&req, dest)?;
    let kinds = [MessageType::Ack, MessageType::Nak];
    match wait_for(t, xid, mac, &kinds, REPLY_WAIT)? {
        Some(r) if r.kind == MessageType::Ack => Ok(r.lease),
        Some(r) => Err(DhcpError::Nak(r.lease.server)),
        None => Err(DhcpError::Timeout("ACK")),
    }
}

/// The `/etc/resolv.conf` for a set of resolvers (the kernel libc reads at most three).
pub fn resolv_conf(dns: &[Ipv4Addr], domain: Option<&str>) -> String {
    let mut out = String::from("# written by cellos-init\n");
    if let Some(d) = domain {
        out.push_str(&format!("search {d}\n"));
    }
    for ns in dns.iter().take(3) {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

    /// Answers like QEMU's slirp: 10.0.2.15/24, router 10.0.2.2, DNS 10.0.2.3.
    #[derive(Default)]
    struct FakeServer {
        sent: Vec<(Message, Ipv4Addr)>,
        queue: VecDeque<Vec<u8>>,
        drop_discovers: u32,
        nak: bool,
    }

    impl FakeServer {
        fn reply(&self, req: &Message, kind: MessageType) -> Vec<u8> {
            let mut m = Message::new_with_id(
                req.xid(),
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::new(10, 0, 2, 15),
                SERVER,
                Ipv4Addr::UNSPECIFIED,
                req.chaddr(),
            );
            m.set_opcode(dhcproto::v4::Opcode::BootReply);
            let o = m.opts_mut();
            o.insert(DhcpOption::MessageType(kind));
            o.insert(DhcpOption::ServerIdentifier(SERVER));
            o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
            o.insert(DhcpOption::Router(vec![SERVER]));
            o.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
                10, 0, 2, 3,
            )]));
            o.insert(DhcpOption::AddressLeaseTime(86_400));
            m.to_vec().expect("encode")
        }
    }

    impl Transport for FakeServer {
        fn send(&mut self, packet: &[u8], dest: Ipv4Addr) -> std::io::Result<()> {
            let m = Message::decode(&mut Decoder::new(packet)).expect("client sends valid DHCP");
            // Noise from another client first: must be ignored.
            let mut other = m.clone();
            other.set_xid(m.xid().wrapping_add(1));
            self.queue.push_back(self.reply(&other, MessageType::Offer));
            match m.opts().msg_type() {
                Some(MessageType::Discover) if self.drop_discovers > 0 => self.drop_discovers -= 1,
                Some(MessageType::Discover) => {
                    let r = self.reply(&m, MessageType::Offer);
                    self.queue.push_back(r);
                }
                Some(MessageType::Request) => {
                    let kind = if self.nak {
                        MessageType::Nak
                    } else {
                        MessageType::Ack
                    };
                    let r = self.reply(&m, kind);
                    self.queue.push_back(r);
                }
                _ => {}
            }
            self.sent.push((m, dest));
            Ok(())
        }

        fn recv(&mut self, _timeout: Duration) -> std::io::Result<Option<Vec<u8>>> {
            Ok(self.queue.pop_front())
        }
    }

    fn qemu_lease() -> Lease {
        Lease {
            addr: Ipv4Addr::new(10, 0, 2, 15),
            prefix: 24,
            router: Some(SERVER),
            dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            domain: None,
            server: SERVER,
            lease_time: Duration::from_secs(86_400),
            t1: Duration::from_secs(43_200),
            t2: Duration::from_secs(75_600),
        }
    }

    #[test]
    fn full_exchange() {
        let mut s = FakeServer::default();
        let lease = acquire(&mut s, MAC, 0x1234, "cellos-123456").expect("lease");
        assert_eq!(lease, qemu_lease());
        assert_eq!(s.sent.len(), 2);
        let (disc, dest) = &s.sent[0];
        assert_eq!(*dest, Ipv4Addr::BROADCAST);
        assert_eq!(disc.opts().msg_type(), Some(MessageType::Discover));
        assert!(disc.flags().broadcast());
        assert_eq!(disc.chaddr(), &MAC);
        let (req, _) = &s.sent[1];
        assert_eq!(req.opts().msg_type(), Some(MessageType::Request));
        assert!(matches!(
            req.opts().get(OptionCode::RequestedIpAddress),
            Some(DhcpOption::RequestedIpAddress(a)) if *a == Ipv4Addr::new(10, 0, 2, 15)
        ));
        assert!(matches!(
            req.opts().get(OptionCode::ServerIdentifier),
            Some(DhcpOption::ServerIdentifier(a)) if *a == SERVER
        ));
        assert!(matches!(
            req.opts().get(OptionCode::Hostname),
            Some(DhcpOption::Hostname(h)) if h == "cellos-123456"
        ));
    }

    #[test]
    fn retries_discover_then_times_out() {
        let mut s = FakeServer {
            drop_discovers: 2,
            ..Default::default()
        };
        assert!(acquire(&mut s, MAC, 1, "").is_ok());
        assert_eq!(s.sent.len(), 4);
        let mut s = FakeServer {
            drop_discovers: 10,
            ..Default::default()
        };
        let err = acquire(&mut s, MAC, 1, "").expect_err("no offer");
        assert_eq!(err.to_string(), "no DHCP OFFER received");
        assert_eq!(s.sent.len(), DISCOVER_TRIES as usize);
    }

    #[test]
    fn nak_is_reported() {
        let mut s = FakeServer {
            nak: true,
            ..Default::default()
        };
        let err = acquire(&mut s, MAC, 1, "").expect_err("nak");
        assert!(matches!(err, DhcpError::Nak(a) if a == SERVER));
    }

    #[test]
    fn renew_unicasts_with_ciaddr_and_rebind_broadcasts() {
        let mut s = FakeServer::default();
        let lease = renew(&mut s, MAC, 9, "", &qemu_lease(), false).expect("renewed");
        assert_eq!(lease, qemu_lease());
        let (req, dest) = &s.sent[0];
        assert_eq!(*dest, SERVER);
        assert_eq!(req.ciaddr(), Ipv4Addr::new(10, 0, 2, 15));
        assert!(req.opts().get(OptionCode::ServerIdentifier).is_none());
        renew(&mut s, MAC, 10, "", &qemu_lease(), true).expect("rebound");
        assert_eq!(s.sent[1].1, Ipv4Addr::BROADCAST);
    }

    #[test]
    fn replies_for_others_are_ignored() {
        let s = FakeServer::default();
        let m = base(5, MAC, Ipv4Addr::UNSPECIFIED, true);
        let packet = s.reply(&m, MessageType::Offer);
        assert!(parse_reply(&packet, 5, MAC).is_some());
        assert!(parse_reply(&packet, 6, MAC).is_none());
        assert!(parse_reply(&packet, 5, [0; 6]).is_none());
        assert!(parse_reply(b"garbage", 5, MAC).is_none());
    }

    #[test]
    fn a_hardware_length_past_the_field_is_ignored() {
        let s = FakeServer::default();
        let m = base(5, MAC, Ipv4Addr::UNSPECIFIED, true);
        let mut packet = s.reply(&m, MessageType::Offer);
        for hlen in [17, 38, 255] {
            packet[2] = hlen;
            assert!(parse_reply(&packet, 5, MAC).is_none(), "hlen {hlen}");
        }
        // The exchange goes on with the next, well-formed reply.
        let mut s = FakeServer::default();
        s.queue.push_back(packet);
        assert!(acquire(&mut s, MAC, 5, "").is_ok());
    }

    #[test]
    fn a_domain_that_is_not_a_search_list_is_dropped() {
        let s = FakeServer::default();
        let m = base(5, MAC, Ipv4Addr::UNSPECIFIED, true);
        let with_domain = |d: &str| {
            let mut r = Message::decode(&mut Decoder::new(&s.reply(&m, MessageType::Offer)))
                .expect("decode");
            r.opts_mut().insert(DhcpOption::DomainName(d.into()));
            let packet = r.to_vec().expect("encode");
            parse_reply(&packet, 5, MAC).expect("reply").lease.domain
        };
        assert_eq!(with_domain("lab.example"), Some("lab.example".into()));
        assert_eq!(with_domain("lab.example\0"), Some("lab.example".into()));
        assert_eq!(
            with_domain("a.example b_2.example"),
            Some("a.example b_2.example".into())
        );
        for bad in [
            "lan\nnameserver 6.6.6.6",
            "\n",
            "x\ry",
            "a\0b",
            "",
            "  ",
            "a  b",
            "ex ample;",
        ] {
            assert_eq!(with_domain(bad), None, "{bad:?}");
        }
        assert_eq!(with_domain(&"a".repeat(254)), None);
    }

    #[test]
    fn resolv_conf_text() {
        let dns = [Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)];
        assert_eq!(
            resolv_conf(&dns, Some("lan")),
            "# written by cellos-init\nsearch lan\nnameserver 10.0.2.3\nnameserver 1.1.1.1\n"
        );
    }
}
