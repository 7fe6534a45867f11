//! RESP (the Redis serialization protocol), both directions.
//!
//! The server side parses commands out of whatever bytes a client sent: arrays of
//! bulk strings (what redis-cli and redis-benchmark send) and inline commands
//! (what a person types into `nc`). Input is hostile: every length is checked
//! against [`Limits`] before anything is allocated, and a malformed frame is a
//! [`ProtocolError`], never a panic. [`CommandParser`] keeps its place inside a
//! frame between reads, so a client that dribbles a large frame a byte at a time
//! costs one pass over its bytes, not one re-parse and copy of the whole partial
//! frame per read. The client side parses replies for our own client
//! ([`crate::client`]).

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
    /// Most payload bytes one command may carry (the sum of its bulk lengths):
    /// what one connection can make the server hold.
    pub max_frame: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk: 16 << 20,
            max_args: 64,
            max_line: 64 << 10,
            max_frame: 17 << 20,
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

/// A command: its name and arguments.
pub type Command = Vec<Vec<u8>>;

/// Where the parser is inside the current frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Between commands.
    Start,
    /// Reading an inline command (`PING hello\r\n`) into `line`.
    Inline,
    /// After `*`: reading the argument count into `line`.
    Count,
    /// Expecting `$` and a bulk length; `left` arguments still to come.
    BulkHeader { left: usize },
    /// Reading a bulk length line into `line`.
    BulkLen { left: usize },
    /// Copying `need` more payload bytes into the last argument.
    Body { left: usize, need: usize },
    /// Expecting the CRLF after a payload; `seen` of its 2 bytes read.
    BodyEnd { left: usize, seen: u8 },
}

/// An incremental command parser (server side): bytes are fed as they arrive and
/// each is looked at once. A payload is copied once, into its argument, which
/// grows with the bytes received (never to a claimed length before they arrive);
/// a frame sent a byte at a time costs what it costs sent at once, and a header
/// line or a claimed length past [`Limits`] is refused as soon as it is seen.
#[derive(Debug)]
pub struct CommandParser {
    limits: Limits,
    step: Step,
    line: Vec<u8>,
    args: Vec<Vec<u8>>,
    /// Payload bytes the current frame's bulk headers claimed so far.
    claimed: usize,
}

impl CommandParser {
    pub fn new(limits: Limits) -> CommandParser {
        CommandParser {
            limits,
            step: Step::Start,
            line: Vec::new(),
            args: Vec::new(),
            claimed: 0,
        }
    }

    /// True while a command has been started but not completed.
    pub fn in_frame(&self) -> bool {
        self.step != Step::Start
    }

    /// Bytes of memory the partial command holds (capacities, not lengths).
    pub fn held(&self) -> usize {
        self.line.capacity() + self.args.iter().map(Vec::capacity).sum::<usize>()
    }

    /// Consumes bytes from the front of `input` until one command is complete.
    ///
    /// Returns the bytes used and the command, if one completed (blank inline
    /// lines and empty arrays are skipped); when no command completed, all of
    /// `input` was used. After an error the connection must be closed.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Command>), ProtocolError> {
        let mut at = 0;
        while at < input.len() {
            let rest = &input[at..];
            match self.step {
                Step::Start => {
                    if rest[0] == b'*' {
                        self.step = Step::Count;
                        at += 1;
                    } else {
                        self.step = Step::Inline;
                    }
                }
                Step::Inline => {
                    let (used, done) = self.take_line(rest)?;
                    at += used;
                    if done {
                        let args: Vec<Vec<u8>> = self
                            .line
                            .split(|b| b.is_ascii_whitespace())
                            .filter(|w| !w.is_empty())
                            .map(<[u8]>::to_vec)
                            .collect();
                        if args.len() > self.limits.max_args {
                            return Err(perr("too many arguments"));
                        }
                        self.reset();
                        if !args.is_empty() {
                            return Ok((at, Some(args)));
                        }
                    }
                }
                Step::Count => {
                    let (used, done) = self.take_line(rest)?;
                    at += used;
                    if done {
                        let n = int(&self.line)?;
                        self.line.clear();
                        if n <= 0 {
                            self.reset();
                            continue;
                        }
                        let n = usize::try_from(n).map_err(|_| perr("invalid multibulk length"))?;
                        if n > self.limits.max_args {
                            return Err(perr(format!(
                                "{n} arguments, at most {} allowed",
                                self.limits.max_args
                            )));
                        }
                        self.args = Vec::with_capacity(n);
                        self.step = Step::BulkHeader { left: n };
                    }
                }
                Step::BulkHeader { left } => {
                    if rest[0] != b'$' {
                        return Err(perr(format!("expected '$', got {:?}", char::from(rest[0]))));
                    }
                    at += 1;
                    self.step = Step::BulkLen { left };
                }
                Step::BulkLen { left } => {
                    let (used, done) = self.take_line(rest)?;
                    at += used;
                    if done {
                        let len = int(&self.line)?;
                        self.line.clear();
                        let len = usize::try_from(len).map_err(|_| perr("invalid bulk length"))?;
                        if len > self.limits.max_bulk {
                            return Err(perr(format!(
                                "bulk of {len} bytes, at most {} allowed",
                                self.limits.max_bulk
                            )));
                        }
                        self.claimed += len;
                        if self.claimed > self.limits.max_frame {
                            return Err(perr(format!(
                                "command of more than {} bytes",
                                self.limits.max_frame
                            )));
                        }
                        self.args.push(Vec::new());
                        self.step = Step::Body { left, need: len };
                    }
                }
                Step::Body { left, need } => {
                    let take = need.min(rest.len());
                    if let Some(arg) = self.args.last_mut() {
                        // Grow geometrically but never past the claimed length, so
                        // memory follows the bytes that arrived.
                        let want = arg.len() + take;
                        if want > arg.capacity() {
                            let cap =
                                (arg.len() + need).min(want.max(arg.capacity() * 2).max(4096));
                            arg.reserve_exact(cap - arg.len());
                        }
                        arg.extend_from_slice(&rest[..take]);
                    }
                    at += take;
                    self.step = if take == need {
                        Step::BodyEnd { left, seen: 0 }
                    } else {
                        Step::Body {
                            left,
                            need: need - take,
                        }
                    };
                }
                Step::BodyEnd { left, seen } => {
                    let want = if seen == 0 { b'\r' } else { b'\n' };
                    if rest[0] != want {
                        return Err(perr("bulk string not terminated by CRLF"));
                    }
                    at += 1;
                    if seen == 0 {
                        self.step = Step::BodyEnd { left, seen: 1 };
                    } else if left > 1 {
                        self.step = Step::BulkHeader { left: left - 1 };
                    } else {
                        let args = std::mem::take(&mut self.args);
                        self.reset();
                        return Ok((at, Some(args)));
                    }
                }
            }
        }
        Ok((at, None))
    }

    /// Appends the bytes of `rest` up to a LF to `line`; returns (bytes used,
    /// whether the line is complete). A trailing CR is dropped.
    fn take_line(&mut self, rest: &[u8]) -> Result<(usize, bool), ProtocolError> {
        let (chunk, done) = match rest.iter().position(|&b| b == b'\n') {
            Some(nl) => (&rest[..nl], true),
            None => (rest, false),
        };
        if self.line.len() + chunk.len() > self.limits.max_line {
            return Err(perr("line too long"));
        }
        self.line.extend_from_slice(chunk);
        if done {
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            Ok((chunk.len() + 1, true))
        } else {
            Ok((chunk.len(), false))
        }
    }

    fn reset(&mut self) {
        self.step = Step::Start;
        self.claimed = 0;
        self.args = Vec::new();
        // A long inline command must not pin its buffer for the connection's life.
        if self.line.capacity() > 1024 {
            self.line = Vec::new();
        } else {
            self.line.clear();
        }
    }
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

    /// Feeds `data` in pieces of `step` bytes; returns the commands completed.
    fn feed_all(
        p: &mut CommandParser,
        data: &[u8],
        step: usize,
    ) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut out = Vec::new();
        for chunk in data.chunks(step.max(1)) {
            let mut at = 0;
            while at < chunk.len() {
                let (used, cmd) = p.feed(&chunk[at..])?;
                at += used;
                out.extend(cmd);
            }
        }
        Ok(out)
    }

    #[test]
    fn parses_arrays_in_pieces() {
        let full = cmd(&[b"SET", b"key", b"va\r\nlue"]);
        for step in 1..=full.len() {
            let mut p = CommandParser::new(Limits::default());
            let cmds = feed_all(&mut p, &full, step).unwrap();
            assert_eq!(
                cmds,
                vec![vec![
                    b"SET".to_vec(),
                    b"key".to_vec(),
                    b"va\r\nlue".to_vec()
                ]],
                "step {step}"
            );
            assert!(!p.in_frame());
        }
        let mut p = CommandParser::new(Limits::default());
        assert_eq!(
            feed_all(&mut p, &full[..full.len() - 1], 3).unwrap(),
            Vec::<Vec<Vec<u8>>>::new()
        );
        assert!(p.in_frame());
    }

    #[test]
    fn parses_inline_and_pipelines() {
        let mut p = CommandParser::new(Limits::default());
        let (used, args) = p.feed(b"PING  hello\r\nGET").unwrap();
        assert_eq!(args, Some(vec![b"PING".to_vec(), b"hello".to_vec()]));
        assert_eq!(used, 13);
        let cmds = feed_all(&mut p, b"GET k\r\n\r\n*0\r\n*1\r\n$4\r\nPING\r\n", 100).unwrap();
        assert_eq!(
            cmds,
            vec![vec![b"GET".to_vec(), b"k".to_vec()], vec![b"PING".to_vec()]]
        );
    }

    #[test]
    fn refuses_oversize_before_reading() {
        let l = Limits {
            max_bulk: 10,
            max_frame: 15,
            ..Limits::default()
        };
        for bad in [
            &b"*1\r\n$11\r\n"[..],
            b"*100\r\n",
            b"*1\r\n$-5\r\n",
            b"*1\r\n$2\r\nabXY",
            b"*1\r\n+2\r\n",
            // Two bulks within max_bulk but past max_frame together.
            b"*2\r\n$10\r\n0123456789\r\n$6\r\n",
        ] {
            let mut p = CommandParser::new(l);
            assert!(
                feed_all(&mut p, bad, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut p = CommandParser::new(Limits { max_line: 8, ..l });
        assert!(feed_all(&mut p, b"PING 123456789", 1).is_err());
    }

    /// A claimed 8 MiB bulk dribbled a byte at a time holds only what arrived.
    #[test]
    fn memory_follows_the_bytes_received() {
        let mut p = CommandParser::new(Limits::default());
        feed_all(&mut p, b"*2\r\n$3\r\nSET\r\n$8388608\r\n", 1).unwrap();
        assert!(p.held() < 1024, "{}", p.held());
        feed_all(&mut p, &[7u8; 100_000], 1).unwrap();
        assert!(p.held() >= 100_000 && p.held() < 300_000, "{}", p.held());
        feed_all(&mut p, &vec![7u8; 8388608 - 100_000], 65536).unwrap();
        assert!(p.held() <= 8388608 + 1024, "{}", p.held());
        let cmds = feed_all(&mut p, b"\r\n", 1).unwrap();
        assert_eq!(cmds[0][1].len(), 8388608);
        assert!(!p.in_frame());
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
            let l = Limits { max_bulk: 100, max_args: 8, max_line: 64, max_frame: 200 };
            let _ = feed_all(&mut CommandParser::new(l), &data, 7);
            let _ = parse_reply(&data, &l);
        }

        #[test]
        fn any_command_round_trips(parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8)) {
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            let wire = cmd(&refs);
            for step in [1, 5, wire.len()] {
                let cmds = feed_all(&mut CommandParser::new(Limits::default()), &wire, step).unwrap();
                prop_assert_eq!(&cmds, &vec![parts.clone()]);
            }
        }
    }
}
