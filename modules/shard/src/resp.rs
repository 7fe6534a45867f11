//! RESP (the Redis serialization protocol), both directions.
//!
//! The server side parses commands out of whatever bytes a client sent: arrays of
//! bulk strings (what redis-cli and redis-benchmark send) and inline commands
//! (what a person types into `nc`). Input is hostile: every length is checked
//! against [`Limits`] before anything is allocated, and a malformed frame is a
//! [`ProtocolError`], never a panic. The client side parses replies for our own
//! client ([`crate::client`]).

use std::fmt;

/// Bounds on what one command may carry; a frame past them is refused before its
/// payload is read.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest bulk string (a value), in bytes.
    pub max_bulk: usize,
    /// Most arguments in one command.
    pub max_args: usize,
    /// Longest header line or inline command, in bytes.
    pub max_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk: 16 << 20,
            max_args: 64,
            max_line: 64 << 10,
        }
    }
}

/// A frame that can never become valid, whatever bytes follow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol error: {0}")]
pub struct ProtocolError(pub String);

fn perr(msg: impl Into<String>) -> ProtocolError {
    ProtocolError(msg.into())
}

/// A parsed command's arguments and the bytes it used; `None` while incomplete.
type Parsed = Result<Option<(Vec<Vec<u8>>, usize)>, ProtocolError>;

/// Finds the CRLF-terminated line starting at `at`; returns (line, index after CRLF).
fn line(buf: &[u8], at: usize, max: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let rest = buf.get(at..).unwrap_or_default();
    match rest.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            if nl > max {
                return Err(perr("line too long"));
            }
            let l = &rest[..nl];
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            Ok(Some((l, at + nl + 1)))
        }
        None if rest.len() > max => Err(perr("line too long")),
        None => Ok(None),
    }
}

fn int(l: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(l)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| perr(format!("invalid length {:?}", String::from_utf8_lossy(l))))
}

/// Parses one command from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some((args, used)))` for a
/// complete command (an empty `args` for a blank inline line), or an error when
/// the frame is invalid and the connection must be closed.
pub fn parse_command(buf: &[u8], limits: &Limits) -> Parsed {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != b'*' {
        return parse_inline(buf, limits);
    }
    let Some((hdr, mut at)) = line(buf, 1, limits.max_line)? else {
        return Ok(None);
    };
    let n = int(hdr)?;
    if n <= 0 {
        return Ok(Some((Vec::new(), at)));
    }
    let n = usize::try_from(n).map_err(|_| perr("invalid multibulk length"))?;
    if n > limits.max_args {
        return Err(perr(format!(
            "{n} arguments, at most {} allowed",
            limits.max_args
        )));
    }
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        match buf.get(at) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&b) => {
                return Err(perr(format!("expected '$', got {:?}", char::from(b))));
            }
        }
        let Some((hdr, start)) = line(buf, at + 1, limits.max_line)? else {
            return Ok(None);
        };
        let len = int(hdr)?;
        let len = usize::try_from(len).map_err(|_| perr("invalid bulk length"))?;
        if len > limits.max_bulk {
            return Err(perr(format!(
                "bulk of {len} bytes, at most {} allowed",
                limits.max_bulk
            )));
        }
        let end = start + len;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(perr("bulk string not terminated by CRLF"));
        }
        args.push(buf[start..end].to_vec());
        at = end + 2;
    }
    Ok(Some((args, at)))
}

fn parse_inline(buf: &[u8], limits: &Limits) -> Parsed {
    let Some((l, used)) = line(buf, 0, limits.max_line)? else {
        return Ok(None);
    };
    let args: Vec<Vec<u8>> = l
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    if args.len() > limits.max_args {
        return Err(perr("too many arguments"));
    }
    Ok(Some((args, used)))
}

/// A reply, as the server sends it and the client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    pub fn err(msg: impl fmt::Display) -> Reply {
        Reply::Error(format!("ERR {msg}"))
    }

    /// Appends the wire form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(s) => push_line(out, b'+', s),
            Reply::Error(s) => push_line(out, b'-', s),
            Reply::Int(i) => {
                out.push(b':');
                out.extend_from_slice(i.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Bulk(b) => {
                out.push(b'$');
                out.extend_from_slice(b.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                out.push(b'*');
                out.extend_from_slice(items.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                for i in items {
                    i.encode(out);
                }
            }
        }
    }
}

/// Simple strings and errors cannot carry CR or LF: they are replaced by spaces.
fn push_line(out: &mut Vec<u8>, tag: u8, s: &str) {
    out.push(tag);
    out.extend(
        s.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// Parses one reply from the front of `buf` (client side); same contract as
/// [`parse_command`].
pub fn parse_reply(buf: &[u8], limits: &Limits) -> Result<Option<(Reply, usize)>, ProtocolError> {
    parse_reply_at(buf, 0, limits, 0)
}

fn parse_reply_at(
    buf: &[u8],
    at: usize,
    limits: &Limits,
    depth: usize,
) -> Result<Option<(Reply, usize)>, ProtocolError> {
    if depth > 8 {
        return Err(perr("replies nested too deeply"));
    }
    let Some(&tag) = buf.get(at) else {
        return Ok(None);
    };
    let Some((l, next)) = line(buf, at + 1, limits.max_line)? else {
        return Ok(None);
    };
    let text = || String::from_utf8_lossy(l).into_owned();
    Ok(Some(match tag {
        b'+' => (Reply::Simple(text()), next),
        b'-' => (Reply::Error(text()), next),
        b':' => (Reply::Int(int(l)?), next),
        b'$' => {
            let n = int(l)?;
            if n < 0 {
                return Ok(Some((Reply::Nil, next)));
            }
            let n = usize::try_from(n).map_err(|_| perr("invalid bulk length"))?;
            if n > limits.max_bulk {
                return Err(perr(format!("reply of {n} bytes is too large")));
            }
            if buf.len() < next + n + 2 {
                return Ok(None);
            }
            (Reply::Bulk(buf[next..next + n].to_vec()), next + n + 2)
        }
        b'*' => {
            let n = int(l)?;
            if n < 0 {
                return Ok(Some((Reply::Nil, next)));
            }
            let n = usize::try_from(n).map_err(|_| perr("invalid array length"))?;
            if n > 1 << 20 {
                return Err(perr("array reply too large"));
            }
            let mut items = Vec::with_capacity(n.min(1024));
            let mut pos = next;
            for _ in 0..n {
                let Some((r, p)) = parse_reply_at(buf, pos, limits, depth + 1)? else {
                    return Ok(None);
                };
                items.push(r);
                pos = p;
            }
            (Reply::Array(items), pos)
        }
        b => return Err(perr(format!("unknown reply type {:?}", char::from(b)))),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cmd(parts: &[&[u8]]) -> Vec<u8> {
        let mut v = format!("*{}\r\n", parts.len()).into_bytes();
        for p in parts {
            v.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
            v.extend_from_slice(p);
            v.extend_from_slice(b"\r\n");
        }
        v
    }

    #[test]
    fn parses_arrays_in_pieces() {
        let l = Limits::default();
        let full = cmd(&[b"SET", b"key", b"va\r\nlue"]);
        for cut in 0..full.len() {
            assert_eq!(parse_command(&full[..cut], &l).unwrap(), None, "cut {cut}");
        }
        let (args, used) = parse_command(&full, &l).unwrap().unwrap();
        assert_eq!(used, full.len());
        assert_eq!(
            args,
            vec![b"SET".to_vec(), b"key".to_vec(), b"va\r\nlue".to_vec()]
        );
    }

    #[test]
    fn parses_inline() {
        let (args, used) = parse_command(b"PING  hello\r\nGET", &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(args, vec![b"PING".to_vec(), b"hello".to_vec()]);
        assert_eq!(used, 13);
    }

    #[test]
    fn refuses_oversize_before_reading() {
        let l = Limits {
            max_bulk: 10,
            ..Limits::default()
        };
        assert!(parse_command(b"*1\r\n$11\r\n", &l).is_err());
        assert!(parse_command(b"*100\r\n", &l).is_err());
        assert!(parse_command(b"*1\r\n$-5\r\n", &l).is_err());
        assert!(parse_command(b"*1\r\n$2\r\nabXY", &l).is_err());
        assert!(parse_command(b"*1\r\n+2\r\n", &l).is_err());
    }

    #[test]
    fn replies_round_trip() {
        let r = Reply::Array(vec![
            Reply::Simple("OK".into()),
            Reply::Error("ERR x".into()),
            Reply::Int(-3),
            Reply::Bulk(b"a\r\nb".to_vec()),
            Reply::Nil,
            Reply::Array(vec![]),
        ]);
        let mut out = Vec::new();
        r.encode(&mut out);
        let (back, used) = parse_reply(&out, &Limits::default()).unwrap().unwrap();
        assert_eq!(back, r);
        assert_eq!(used, out.len());
    }

    proptest! {
        #[test]
        fn never_panics_on_garbage(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let l = Limits { max_bulk: 100, max_args: 8, max_line: 64 };
            let _ = parse_command(&data, &l);
            let _ = parse_reply(&data, &l);
        }

        #[test]
        fn any_command_round_trips(parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8)) {
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            let wire = cmd(&refs);
            let (args, used) = parse_command(&wire, &Limits::default()).unwrap().unwrap();
            prop_assert_eq!(args, parts);
            prop_assert_eq!(used, wire.len());
        }
    }
}
