//! rtnetlink messages for the few things init does to the network: set a link up, add or
//! remove an IPv4 address, add a default route.
//!
//! Hand-written rather than taken from a crate: it is five fixed-layout messages and an ACK,
//! about a hundred lines with no dependency churn, and the bytes are unit-tested here. The
//! socket that sends them lives in `sys`.

use std::net::Ipv4Addr;

const NLMSG_HDRLEN: usize = 16;
/// `NLMSG_ERROR`: the kernel's answer to a request with `NLM_F_ACK`.
const NLMSG_ERROR: u16 = 2;

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;

const IFF_UP: u32 = 0x1;
const AF_INET: u8 = 2;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
/// The gateway is reachable on the link even if outside the address's prefix.
const RTNH_F_ONLINK: u32 = 4;

fn header(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32) {
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, fixed up in finish()
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
}

fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    while buf.len() & 3 != 0 {
        buf.push(0);
    }
}

fn finish(mut buf: Vec<u8>) -> Vec<u8> {
    let len = (buf.len() as u32).to_ne_bytes();
    buf[..4].copy_from_slice(&len);
    buf
}

/// `ip link set <index> up`.
pub fn link_up(seq: u32, index: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(32);
    header(&mut b, RTM_NEWLINK, 0, seq);
    b.push(0); // family AF_UNSPEC
    b.push(0); // pad
    b.extend_from_slice(&0u16.to_ne_bytes()); // device type
    b.extend_from_slice(&index.to_ne_bytes());
    b.extend_from_slice(&IFF_UP.to_ne_bytes()); // flags
    b.extend_from_slice(&IFF_UP.to_ne_bytes()); // change mask
    finish(b)
}

fn addr_msg(kind: u16, flags: u16, seq: u32, index: u32, addr: Ipv4Addr, prefix: u8) -> Vec<u8> {
    let mut b = Vec::with_capacity(48);
    header(&mut b, kind, flags, seq);
    b.extend_from_slice(&[AF_INET, prefix, 0, RT_SCOPE_UNIVERSE]);
    b.extend_from_slice(&index.to_ne_bytes());
    attr(&mut b, IFA_LOCAL, &addr.octets());
    attr(&mut b, IFA_ADDRESS, &addr.octets());
    if prefix < 31 {
        attr(&mut b, IFA_BROADCAST, &broadcast(addr, prefix).octets());
    }
    finish(b)
}

/// `ip addr replace <addr>/<prefix> dev <index>` (with the subnet broadcast).
pub fn add_addr(seq: u32, index: u32, addr: Ipv4Addr, prefix: u8) -> Vec<u8> {
    addr_msg(
        RTM_NEWADDR,
        NLM_F_CREATE | NLM_F_REPLACE,
        seq,
        index,
        addr,
        prefix,
    )
}

/// `ip addr del <addr>/<prefix> dev <index>`.
pub fn del_addr(seq: u32, index: u32, addr: Ipv4Addr, prefix: u8) -> Vec<u8> {
    addr_msg(RTM_DELADDR, 0, seq, index, addr, prefix)
}

/// `ip route replace default via <gw> dev <index> [onlink]`.
pub fn default_route(seq: u32, index: u32, gw: Ipv4Addr, onlink: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(48);
    header(&mut b, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, seq);
    b.extend_from_slice(&[
        AF_INET,
        0, // dst_len: default route
        0, // src_len
        0, // tos
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
    ]);
    let flags = if onlink { RTNH_F_ONLINK } else { 0 };
    b.extend_from_slice(&flags.to_ne_bytes());
    attr(&mut b, RTA_GATEWAY, &gw.octets());
    attr(&mut b, RTA_OIF, &index.to_ne_bytes());
    finish(b)
}

/// The subnet broadcast address of `addr/prefix`.
pub fn broadcast(addr: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(addr) | !mask(prefix))
}

/// Is `other` inside `addr/prefix`?
pub fn same_subnet(addr: Ipv4Addr, prefix: u8, other: Ipv4Addr) -> bool {
    u32::from(addr) & mask(prefix) == u32::from(other) & mask(prefix)
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p if p >= 32 => u32::MAX,
        p => u32::MAX << (32 - u32::from(p)),
    }
}

/// Find the answer to request `seq` in a datagram from the kernel: `Some(0)` for success,
/// `Some(errno)` (positive) for failure, `None` if this datagram holds no answer to it.
pub fn ack_for(buf: &[u8], seq: u32) -> Option<i32> {
    let mut off = 0usize;
    while off + NLMSG_HDRLEN <= buf.len() {
        let word = |at: usize| -> Option<[u8; 4]> { buf.get(at..at + 4)?.try_into().ok() };
        let len = u32::from_ne_bytes(word(off)?) as usize;
        let kind = u16::from_ne_bytes(buf.get(off + 4..off + 6)?.try_into().ok()?);
        let msg_seq = u32::from_ne_bytes(word(off + 8)?);
        if len < NLMSG_HDRLEN {
            return None;
        }
        if kind == NLMSG_ERROR && msg_seq == seq {
            let err = i32::from_ne_bytes(word(off + NLMSG_HDRLEN)?);
            return Some(-err);
        }
        off += (len + 3) & !3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    #[test]
    fn link_up_layout() {
        let m = link_up(7, 2);
        assert_eq!(m.len(), 32);
        assert_eq!(u32_at(&m, 0), 32);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_NEWLINK);
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32_at(&m, 8), 7);
        assert_eq!(u32_at(&m, 20), 2);
        assert_eq!(u32_at(&m, 24), IFF_UP);
        assert_eq!(u32_at(&m, 28), IFF_UP);
    }

    #[test]
    fn add_addr_layout() {
        let m = add_addr(1, 3, Ipv4Addr::new(10, 0, 2, 15), 24);
        // header 16 + ifaddrmsg 8 + three 8-byte attributes
        assert_eq!(m.len(), 48);
        assert_eq!(u32_at(&m, 0), 48);
        assert_eq!(&m[16..20], &[AF_INET, 24, 0, 0]);
        assert_eq!(u32_at(&m, 20), 3);
        assert_eq!(&m[24..32], &[8, 0, 2, 0, 10, 0, 2, 15]); // IFA_LOCAL
        assert_eq!(&m[40..48], &[8, 0, 4, 0, 10, 0, 2, 255]); // IFA_BROADCAST
        let d = del_addr(2, 3, Ipv4Addr::new(10, 0, 2, 15), 32);
        assert_eq!(d.len(), 40);
        assert_eq!(u16::from_ne_bytes([d[4], d[5]]), RTM_DELADDR);
    }

    #[test]
    fn route_layout() {
        let m = default_route(5, 2, Ipv4Addr::new(10, 0, 2, 2), true);
        assert_eq!(m.len(), 16 + 12 + 8 + 8);
        assert_eq!(m[16 + 4], RT_TABLE_MAIN);
        assert_eq!(u32_at(&m, 24), RTNH_F_ONLINK);
        assert_eq!(&m[28..36], &[8, 0, 5, 0, 10, 0, 2, 2]);
        assert_eq!(&m[36..40], &[8, 0, 4, 0]);
        assert_eq!(u32_at(&m, 40), 2);
    }

    #[test]
    fn subnet_math() {
        let a = Ipv4Addr::new(10, 0, 2, 15);
        assert_eq!(broadcast(a, 24), Ipv4Addr::new(10, 0, 2, 255));
        assert_eq!(broadcast(a, 0), Ipv4Addr::BROADCAST);
        assert!(same_subnet(a, 24, Ipv4Addr::new(10, 0, 2, 2)));
        assert!(!same_subnet(a, 24, Ipv4Addr::new(10, 0, 3, 2)));
        assert!(!same_subnet(a, 32, Ipv4Addr::new(10, 0, 2, 2)));
    }

    #[test]
    fn acks() {
        let mut ok = Vec::new();
        ok.extend_from_slice(&36u32.to_ne_bytes());
        ok.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ok.extend_from_slice(&0u16.to_ne_bytes());
        ok.extend_from_slice(&9u32.to_ne_bytes());
        ok.extend_from_slice(&0u32.to_ne_bytes());
        ok.extend_from_slice(&(-17i32).to_ne_bytes());
        ok.extend_from_slice(&[0; 16]);
        assert_eq!(ack_for(&ok, 9), Some(17));
        assert_eq!(ack_for(&ok, 8), None);
        assert_eq!(ack_for(&ok[..10], 9), None);
        ok[16..20].copy_from_slice(&0i32.to_ne_bytes());
        assert_eq!(ack_for(&ok, 9), Some(0));
    }
}
