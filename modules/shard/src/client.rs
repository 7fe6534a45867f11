//! A small async RESP client for shardd: what the object store and the tests use
//! to talk to shard servers.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::namespace::NamespaceOptions;
use crate::resp::{self, Limits, Reply};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("shard {addr}: connect")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("shard {addr}: connection")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("shard {addr}: timed out after {secs} s")]
    Timeout { addr: SocketAddr, secs: u64 },
    #[error("shard {addr}: connection closed")]
    Closed { addr: SocketAddr },
    #[error("shard {addr}: reply")]
    Protocol {
        addr: SocketAddr,
        #[source]
        source: resp::ProtocolError,
    },
    #[error("shard {addr}: {command}: {message}")]
    Server {
        addr: SocketAddr,
        command: String,
        message: String,
    },
    #[error("shard {addr}: {command}: unexpected reply {reply:?}")]
    Unexpected {
        addr: SocketAddr,
        command: String,
        reply: String,
    },
}

/// One connection to a shard server.
pub struct Client {
    addr: SocketAddr,
    stream: TcpStream,
    buf: Vec<u8>,
    limits: Limits,
    timeout: Duration,
}

impl Client {
    /// Connects; the session starts on the `default` namespace of a stand-alone
    /// server, on none on a strict one (SELECT first).
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Client, ClientError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout {
                addr,
                secs: timeout.as_secs(),
            })?
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        Ok(Client {
            addr,
            stream,
            buf: Vec::with_capacity(64 << 10),
            limits: Limits {
                max_bulk: 256 << 20,
                ..Limits::default()
            },
            timeout,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one command and reads its reply; a RESP error reply is returned as
    /// `Reply::Error`, not as `Err`.
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, ClientError> {
        let t = self.timeout;
        let addr = self.addr;
        tokio::time::timeout(t, self.call_inner(args))
            .await
            .map_err(|_| ClientError::Timeout {
                addr,
                secs: t.as_secs(),
            })?
    }

    async fn call_inner(&mut self, args: &[&[u8]]) -> Result<Reply, ClientError> {
        let addr = self.addr;
        let io = |source| ClientError::Io { addr, source };
        let mut out = Vec::with_capacity(32 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&out).await.map_err(io)?;
        loop {
            match resp::parse_reply(&self.buf, &self.limits) {
                Ok(Some((r, used))) => {
                    self.buf.drain(..used);
                    return Ok(r);
                }
                Ok(None) => {}
                Err(source) => return Err(ClientError::Protocol { addr, source }),
            }
            self.buf.reserve(64 << 10);
            if self.stream.read_buf(&mut self.buf).await.map_err(io)? == 0 {
                return Err(ClientError::Closed { addr });
            }
        }
    }

    /// Like [`call`](Self::call), with error replies turned into `Err`.
    async fn ok_call(&mut self, args: &[&[u8]]) -> Result<Reply, ClientError> {
        match self.call(args).await? {
            Reply::Error(message) => Err(ClientError::Server {
                addr: self.addr,
                command: String::from_utf8_lossy(args[0]).into_owned(),
                message,
            }),
            r => Ok(r),
        }
    }

    fn unexpected(&self, command: &str, r: Reply) -> ClientError {
        ClientError::Unexpected {
            addr: self.addr,
            command: command.into(),
            reply: format!("{r:?}"),
        }
    }

    pub async fn select(&mut self, ns: &str, password: Option<&str>) -> Result<(), ClientError> {
        match password {
            Some(p) => {
                self.ok_call(&[b"SELECT", ns.as_bytes(), p.as_bytes()])
                    .await?
            }
            None => self.ok_call(&[b"SELECT", ns.as_bytes()]).await?,
        };
        Ok(())
    }

    /// Logs in as the admin (needed for the `ns_*` calls when the server has an
    /// admin password).
    pub async fn auth(&mut self, admin_password: &str) -> Result<(), ClientError> {
        self.ok_call(&[b"AUTH", admin_password.as_bytes()])
            .await
            .map(|_| ())
    }

    /// Creates a namespace with its settings in one step (NSNEW), so it is never
    /// reachable without its password.
    pub async fn ns_new(&mut self, name: &str, opts: &NamespaceOptions) -> Result<(), ClientError> {
        let max = opts.max_size.to_string();
        let mode = opts.mode.map(|m| m.to_string());
        let mut args: Vec<&[u8]> = vec![b"NSNEW", name.as_bytes(), b"maxsize", max.as_bytes()];
        if let Some(p) = &opts.password {
            args.extend([&b"password"[..], p.as_bytes()]);
        }
        if let Some(m) = &mode {
            args.extend([&b"mode"[..], m.as_bytes()]);
        }
        if opts.public {
            args.extend([&b"public"[..], b"1"]);
        }
        self.ok_call(&args).await.map(|_| ())
    }

    pub async fn ns_del(&mut self, name: &str) -> Result<(), ClientError> {
        self.ok_call(&[b"NSDEL", name.as_bytes()]).await.map(|_| ())
    }

    /// Changes one setting of a namespace (NSSET): `maxsize` (bytes), `password`
    /// (`*` clears it), `public` (`0`/`1`) or `mode` (`user`/`seq`, while empty).
    pub async fn ns_set(&mut self, name: &str, prop: &str, value: &str) -> Result<(), ClientError> {
        self.ok_call(&[b"NSSET", name.as_bytes(), prop.as_bytes(), value.as_bytes()])
            .await
            .map(|_| ())
    }

    /// NSINFO: `field: value` lines (entries, data_size_bytes, data_limits_bytes, ...).
    pub async fn ns_info(&mut self, name: &str) -> Result<String, ClientError> {
        match self.ok_call(&[b"NSINFO", name.as_bytes()]).await? {
            Reply::Bulk(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            r => Err(self.unexpected("NSINFO", r)),
        }
    }

    pub async fn ns_list(&mut self) -> Result<Vec<String>, ClientError> {
        let r = self.ok_call(&[b"NSLIST"]).await?;
        if let Reply::Array(items) = &r {
            let names: Option<Vec<String>> = items
                .iter()
                .map(|i| match i {
                    Reply::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
                    _ => None,
                })
                .collect();
            if let Some(names) = names {
                return Ok(names);
            }
        }
        Err(self.unexpected("NSLIST", r))
    }

    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.ok_call(&[b"PING"]).await.map(|_| ())
    }

    /// SET; returns the key (the given one, or the server's in seq mode).
    pub async fn set(&mut self, key: &[u8], value: &[u8]) -> Result<Vec<u8>, ClientError> {
        match self.ok_call(&[b"SET", key, value]).await? {
            Reply::Simple(_) => Ok(key.to_vec()),
            Reply::Bulk(k) => Ok(k),
            r => Err(self.unexpected("SET", r)),
        }
    }

    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        match self.ok_call(&[b"GET", key]).await? {
            Reply::Bulk(v) => Ok(Some(v)),
            Reply::Nil => Ok(None),
            r => Err(self.unexpected("GET", r)),
        }
    }

    pub async fn del(&mut self, key: &[u8]) -> Result<bool, ClientError> {
        match self.ok_call(&[b"DEL", key]).await? {
            Reply::Int(n) => Ok(n > 0),
            r => Err(self.unexpected("DEL", r)),
        }
    }

    /// CHECK: `Ok(true)` if the record verifies, `Ok(false)` if absent, `Err` if corrupt.
    pub async fn check(&mut self, key: &[u8]) -> Result<bool, ClientError> {
        match self.ok_call(&[b"CHECK", key]).await? {
            Reply::Simple(_) => Ok(true),
            Reply::Nil => Ok(false),
            r => Err(self.unexpected("CHECK", r)),
        }
    }

    /// One SCAN page: (next cursor, keys).
    pub async fn scan(
        &mut self,
        cursor: &[u8],
        count: usize,
    ) -> Result<(Vec<u8>, Vec<Vec<u8>>), ClientError> {
        let c = count.to_string();
        let r = self
            .ok_call(&[b"SCAN", cursor, b"COUNT", c.as_bytes()])
            .await?;
        if let Reply::Array(items) = &r {
            if let [Reply::Bulk(next), Reply::Array(keys)] = items.as_slice() {
                let mut out = Vec::with_capacity(keys.len());
                for k in keys {
                    match k {
                        Reply::Bulk(k) => out.push(k.clone()),
                        _ => return Err(self.unexpected("SCAN", r.clone())),
                    }
                }
                return Ok((next.clone(), out));
            }
        }
        Err(self.unexpected("SCAN", r))
    }
}
