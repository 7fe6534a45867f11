//! Init targets: what the boot loader, the boot stick and the LAN's DHCP server
//! hand PID 1. Init must never panic (it is PID 1: a panic is a kernel panic).

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::Duration;

use cellos_boot::cmdline;
use cellos_boot::stick::{self, FileError};
use cellos_dhcp::{self as dhcp, Lease, Transport};
use cellos_ledger::EnrollToken;
use dhcproto::v4::Message;
use dhcproto::{Decodable, Decoder};

/// The kernel command line, as init reads it from `/proc/cmdline`.
pub fn cmdline(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (cfg, errors) = cmdline::parse(&text);
    let _ = stick::from_stick(&text);
    for e in &errors {
        let _ = stick::is_boot_key(e);
    }
    // A value the parser took is one it takes again on its own.
    if let Some(url) = &cfg.ledger {
        let (again, errors) = cmdline::parse(&format!("cellos.ledger={url}"));
        assert!(
            errors.is_empty(),
            "the ledger URL {url:?} is refused on its own"
        );
        assert_eq!(again.ledger.as_deref(), Some(url.as_str()));
    }
    if let cmdline::NetConfig::Static(net) = &cfg.net {
        assert!(net.prefix <= 32, "prefix {} accepted", net.prefix);
    }
    let _ = cfg.to_env();
    // cellosd parses the enrollment token the cmdline carries.
    if let Some(token) = &cfg.enroll {
        if let Ok(t) = EnrollToken::parse(token) {
            assert_eq!(
                EnrollToken::parse(&t.to_text()),
                Ok(t),
                "an enrollment token does not survive its text form"
            );
        }
    }
}

/// `cellos.cfg` from the boot stick's FAT partition (read as UTF-8 text).
pub fn bootcfg(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match stick::parse_file(text) {
        Ok(words) => {
            // The words are appended to the cmdline: each must be one cellos.* word
            // the cmdline parser takes.
            let (_, errors) = cmdline::parse(&words);
            assert!(
                errors.is_empty(),
                "{words:?} gives cmdline errors {errors:?}"
            );
            for w in words.split(' ').filter(|_| !words.is_empty()) {
                assert!(
                    w.starts_with("cellos.") && !w.contains(char::is_whitespace),
                    "{w:?} in {words:?} is not one cellos.* word"
                );
            }
        }
        Err(FileError::Syntax { line, .. }) => {
            let lines = text.lines().count().max(1);
            assert!(
                (1..=lines).contains(&line),
                "syntax error on line {line} of a {lines}-line file"
            );
        }
        Err(FileError::Value { .. }) => {}
    }
}

/// Splits a dhcp input into server packets.
pub const PACKET_MARKER: &[u8] = b"@@PKT@@";
const XID: u32 = 0x1234_5678;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// A DHCP server that answers with the fuzzer's packets, one per receive. Each
/// packet gets our transaction id and MAC patched in (the client ignores other
/// clients' replies; a fuzzer would rarely guess them), so the fuzzer explores
/// what the client does with replies that are meant for it.
struct Replies {
    packets: VecDeque<Vec<u8>>,
}

impl Transport for Replies {
    fn send(&mut self, packet: &[u8], _dest: Ipv4Addr) -> std::io::Result<()> {
        Message::decode(&mut Decoder::new(packet)).expect("the client sends valid DHCP");
        Ok(())
    }

    fn recv(&mut self, _timeout: Duration) -> std::io::Result<Option<Vec<u8>>> {
        Ok(self.packets.pop_front().map(|mut p| {
            if p.len() >= 34 {
                p[4..8].copy_from_slice(&XID.to_be_bytes());
                p[28..34].copy_from_slice(&MAC);
            }
            p
        }))
    }
}

/// Splits `data` on `marker`.
pub fn split<'a>(data: &'a [u8], marker: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(marker.len()).position(|w| w == marker) {
        out.push(&rest[..i]);
        rest = &rest[i + marker.len()..];
    }
    out.push(rest);
    out
}

/// Replies to DISCOVER, REQUEST and a renewal REQUEST.
pub fn dhcp(data: &[u8]) {
    let packets = split(data, PACKET_MARKER)
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    let mut t = Replies { packets };
    let Ok(lease) = dhcp::acquire(&mut t, MAC, XID, "node") else {
        return;
    };
    check_lease(&lease);
    if let Ok(renewed) = dhcp::renew(&mut t, MAC, XID, "node", &lease, false) {
        check_lease(&renewed);
    }
}

/// What init does with a lease: an address with a prefix, timers, and resolv.conf.
fn check_lease(l: &Lease) {
    assert!(l.prefix <= 32, "prefix {}", l.prefix);
    assert!(
        l.t1 <= l.t2 && l.t2 <= l.lease_time,
        "timers out of order: {l:?}"
    );
    let conf = dhcp::resolv_conf(&l.dns, l.domain.as_deref());
    let want = 1 + usize::from(l.domain.is_some()) + l.dns.len().min(3);
    assert_eq!(
        conf.lines().count(),
        want,
        "resolv.conf from {l:?} has extra lines:\n{conf}"
    );
}
