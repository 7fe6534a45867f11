//! The boot configuration carried on the kernel command line.
//!
//! Farmers bake `cellos.*` keys into the image's cmdline (PXE script, UKI); init reads them from
//! `/proc/cmdline` and hands them to its services as the [`env`] variables. This module is
//! pure: it takes the cmdline as a string and never touches the system, so init, the fuzzer
//! and tests get the same answer. A bad value never aborts the boot: the parser
//! reports it as a [`CmdlineError`], keeps the default, and goes on.

use std::fmt;
use std::net::Ipv4Addr;

use crate::env;

/// The `cellos.*` keys, as written on the cmdline (and in the image builder's cmdline).
pub mod key {
    /// `cellos.farm=<farm id>`.
    pub const FARM: &str = "cellos.farm";
    /// `cellos.ledger=<url>`.
    pub const LEDGER: &str = "cellos.ledger";
    /// `cellos.enroll=<token>`.
    pub const ENROLL: &str = "cellos.enroll";
    /// `cellos.ca=<base64 DER>`.
    pub const CA: &str = "cellos.ca";
    /// `cellos.mode=dev|test|prod`.
    pub const MODE: &str = "cellos.mode";
    /// `cellos.debug[=0|1]`.
    pub const DEBUG: &str = "cellos.debug";
    /// `cellos.net=...`.
    pub const NET: &str = "cellos.net";
    /// `cellos.net.peer=<iface>:<ip/prefix>`.
    pub const NET_PEER: &str = "cellos.net.peer";
    /// `cellos.disks=keep|wipe`.
    pub const DISKS: &str = "cellos.disks";
    /// `cellos.selftest=<name>`.
    pub const SELFTEST: &str = "cellos.selftest";
    /// `cellos.registry.insecure=<host[:port]>[,<host[:port]>...]`.
    pub const INSECURE_REGISTRIES: &str = "cellos.registry.insecure";
}

/// How strict the node is. `Prod` unless the cmdline says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Developer machines: faucets and shortcuts allowed.
    Dev,
    /// Test networks.
    Test,
    /// Production: the default.
    #[default]
    Prod,
}

impl Mode {
    /// The spelling used on the cmdline and in `CELLOS_MODE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Dev => "dev",
            Mode::Test => "test",
            Mode::Prod => "prod",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fixed IPv4 configuration for the uplink (`cellos.net=static:<iface>,<ip/prefix>,<gw>[,<dns>]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticNet {
    /// Interface name, e.g. `eth0`.
    pub iface: String,
    /// The node's address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
    /// Default gateway.
    pub gateway: Ipv4Addr,
    /// Resolver, if given.
    pub dns: Option<Ipv4Addr>,
}

/// A second interface with a fixed address and no route
/// (`cellos.net.peer=eth1:192.168.77.11/24`): the node's side of a segment it shares
/// with other nodes, where tenant networks' WireGuard endpoints listen. It is never
/// taken as the uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNet {
    /// Interface name, e.g. `eth1`.
    pub iface: String,
    /// The node's address on the segment.
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

/// How init brings up the uplink.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetConfig {
    /// DHCP on the first non-loopback interface with carrier (the default).
    #[default]
    Dhcp,
    /// DHCP on the named interface.
    DhcpOn(String),
    /// Static addressing.
    Static(StaticNet),
}

/// Everything the `cellos.*` cmdline keys say.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootConfig {
    /// Farm the node registers into (`cellos.farm`).
    pub farm: Option<u32>,
    /// Ledger base URL, `http://` or `https://` (`cellos.ledger`).
    pub ledger: Option<String>,
    /// Enrollment token signed by the farm's enrollment key (`cellos.enroll`).
    pub enroll: Option<String>,
    /// `cellos.mode`, default `prod`.
    pub mode: Mode,
    /// `cellos.debug`: more logs, and a shell on the second serial port (ttyS1).
    pub debug: bool,
    /// `cellos.net`, default DHCP.
    pub net: NetConfig,
    /// `cellos.net.peer`: a second interface with a fixed address.
    pub peer: Option<PeerNet>,
    /// `cellos.disks=keep|wipe`: what the node does with disks that hold foreign
    /// data (default keep: left alone).
    pub disks: Option<String>,
    /// `cellos.selftest=<name>`: a self-test cellosd runs in test mode (end-to-end
    /// tests only).
    pub selftest: Option<String>,
    /// `cellos.ca=<base64 DER>`: one more certificate authority the node trusts for an
    /// `https://` ledger (a farm's own CA), beside the usual public roots.
    pub ca: Option<String>,
    /// `cellos.registry.insecure`: OCI registries (`host[:port]`, as image references
    /// name them) the node pulls container images from over plain HTTP: a farm's own
    /// registry on its LAN, or the test registry. Every blob is still checked against
    /// its digest; what plain HTTP loses is the secrecy of what is pulled.
    pub insecure_registries: Vec<String>,
}

impl BootConfig {
    /// The `CELLOS_*` environment variables that carry this config to services.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(farm) = self.farm {
            out.push((env::FARM.to_string(), farm.to_string()));
        }
        if let Some(ledger) = &self.ledger {
            out.push((env::LEDGER.to_string(), ledger.clone()));
        }
        if let Some(enroll) = &self.enroll {
            out.push((env::ENROLL.to_string(), enroll.clone()));
        }
        out.push((env::MODE.to_string(), self.mode.as_str().to_string()));
        let debug = if self.debug { "1" } else { "0" };
        out.push((env::DEBUG.to_string(), debug.to_string()));
        if let Some(disks) = &self.disks {
            out.push((env::DISKS.to_string(), disks.clone()));
        }
        if let Some(selftest) = &self.selftest {
            out.push((env::SELFTEST.to_string(), selftest.clone()));
        }
        if let Some(ca) = &self.ca {
            out.push((env::CA.to_string(), ca.clone()));
        }
        if !self.insecure_registries.is_empty() {
            out.push((
                env::INSECURE_REGISTRIES.to_string(),
                self.insecure_registries.join(","),
            ));
        }
        out
    }
}

/// A problem with one cmdline key. Each is a warning: the key keeps its default.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    /// The key is known but its value is not usable.
    #[error("bad {key}={value:?}: expected {expected}")]
    BadValue {
        /// The key, e.g. `cellos.farm`.
        key: String,
        /// The value as written.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// A `cellos.*` key this version does not know.
    #[error("unknown key {key} (ignored)")]
    UnknownKey {
        /// The key as written.
        key: String,
    },
}

const FARM_EXPECTED: &str = "a farm id (unsigned integer)";
const LEDGER_EXPECTED: &str = "an http:// or https:// URL with a host";
const ENROLL_EXPECTED: &str = "a non-empty token";
const CA_EXPECTED: &str = "a CA certificate as base64 DER (no PEM header, no spaces)";
const MODE_EXPECTED: &str = "dev, test or prod";
const DEBUG_EXPECTED: &str = "no value, 0 or 1";
const DISKS_EXPECTED: &str = "keep or wipe";
const SELFTEST_EXPECTED: &str = "a self-test name";
const NET_PEER_EXPECTED: &str = "<iface>:<ip/prefix>, e.g. eth1:192.168.77.11/24";
const REGISTRIES_EXPECTED: &str = "host[:port] registries, comma separated";
const NET_EXPECTED: &str = "dhcp, <iface> or static:<iface>,<ip/prefix>,<gw>[,<dns>]";

/// Parse a kernel command line (the contents of `/proc/cmdline`).
///
/// Returns the config with defaults for anything missing or bad, and one error per bad or
/// unknown `cellos.*` key. Keys not starting with `cellos.` are ignored. When a key repeats,
/// the last valid occurrence wins, as with kernel parameters.
pub fn parse(cmdline: &str) -> (BootConfig, Vec<CmdlineError>) {
    let mut cfg = BootConfig::default();
    let mut errors = Vec::new();
    for (key, value) in split_params(cmdline) {
        if !key.starts_with("cellos.") {
            continue;
        }
        let bad = |expected: &'static str| CmdlineError::BadValue {
            key: key.clone(),
            value: value.clone().unwrap_or_default(),
            expected,
        };
        match key.as_str() {
            key::FARM => match value.as_deref().map(str::parse::<u32>) {
                Some(Ok(farm)) => cfg.farm = Some(farm),
                _ => errors.push(bad(FARM_EXPECTED)),
            },
            key::LEDGER => match value.as_deref() {
                Some(url) if valid_url(url) => cfg.ledger = Some(url.to_string()),
                _ => errors.push(bad(LEDGER_EXPECTED)),
            },
            key::ENROLL => match value.as_deref() {
                Some(token) if !token.is_empty() => cfg.enroll = Some(token.to_string()),
                _ => errors.push(bad(ENROLL_EXPECTED)),
            },
            key::CA => match value.as_deref() {
                Some(b64)
                    if !b64.is_empty()
                        && b64
                            .bytes()
                            .all(|c| c.is_ascii_alphanumeric() || b"+/=".contains(&c)) =>
                {
                    cfg.ca = Some(b64.to_string())
                }
                _ => errors.push(bad(CA_EXPECTED)),
            },
            key::MODE => match value.as_deref() {
                Some("dev") => cfg.mode = Mode::Dev,
                Some("test") => cfg.mode = Mode::Test,
                Some("prod") => cfg.mode = Mode::Prod,
                _ => errors.push(bad(MODE_EXPECTED)),
            },
            key::DEBUG => match value.as_deref() {
                None | Some("1") | Some("true") | Some("yes") | Some("on") => cfg.debug = true,
                Some("0") | Some("false") | Some("no") | Some("off") => cfg.debug = false,
                Some(_) => errors.push(bad(DEBUG_EXPECTED)),
            },
            key::NET => match value.as_deref().and_then(parse_net) {
                Some(net) => cfg.net = net,
                None => errors.push(bad(NET_EXPECTED)),
            },
            key::NET_PEER => match value.as_deref().and_then(parse_peer) {
                Some(peer) => cfg.peer = Some(peer),
                None => errors.push(bad(NET_PEER_EXPECTED)),
            },
            key::DISKS => match value.as_deref() {
                Some(v @ ("keep" | "wipe")) => cfg.disks = Some(v.to_string()),
                _ => errors.push(bad(DISKS_EXPECTED)),
            },
            key::SELFTEST => match value.as_deref() {
                Some(v) if !v.is_empty() => cfg.selftest = Some(v.to_string()),
                _ => errors.push(bad(SELFTEST_EXPECTED)),
            },
            key::INSECURE_REGISTRIES => {
                let list: Vec<String> = value
                    .as_deref()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::to_string)
                    .collect();
                if list.iter().all(|r| valid_registry(r)) {
                    cfg.insecure_registries = list;
                } else {
                    errors.push(bad(REGISTRIES_EXPECTED));
                }
            }
            _ => errors.push(CmdlineError::UnknownKey { key }),
        }
    }
    (cfg, errors)
}

/// Split a cmdline into `(key, Some(value))` / `(key, None)` pairs. Double quotes group words
/// (`key="a b"`) and are removed, as the kernel does.
fn split_params(cmdline: &str) -> Vec<(String, Option<String>)> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut has_word = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                has_word = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_word {
                    words.push(std::mem::take(&mut cur));
                    has_word = false;
                }
            }
            c => {
                cur.push(c);
                has_word = true;
            }
        }
    }
    if has_word {
        words.push(cur);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (w, None),
        })
        .collect()
}

fn valid_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(rest) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            !host.is_empty() && !host.starts_with(':') && !rest.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

/// `host[:port]`: a DNS name or IPv4 address and an optional port.
fn valid_registry(r: &str) -> bool {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-')
        && match port {
            None => true,
            Some(p) => p.parse::<u16>().is_ok_and(|p| p > 0),
        }
}

fn valid_iface(name: &str) -> bool {
    // Linux: at most 15 bytes (IFNAMSIZ - 1), no '/', no whitespace, not "." or "..".
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c == ',' || c.is_whitespace())
}

/// `192.168.1.10/24`.
fn parse_cidr(cidr: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = cidr.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    Some((addr.parse().ok()?, prefix))
}

fn parse_peer(value: &str) -> Option<PeerNet> {
    let (iface, cidr) = value.split_once(':')?;
    let (addr, prefix) = parse_cidr(cidr)?;
    valid_iface(iface).then(|| PeerNet {
        iface: iface.to_string(),
        addr,
        prefix,
    })
}

fn parse_net(value: &str) -> Option<NetConfig> {
    if value == "dhcp" {
        return Some(NetConfig::Dhcp);
    }
    if let Some(rest) = value.strip_prefix("static:") {
        let parts: Vec<&str> = rest.split(',').collect();
        let (iface, cidr, gw, dns) = match parts.as_slice() {
            [iface, cidr, gw] => (*iface, *cidr, *gw, None),
            [iface, cidr, gw, dns] => (*iface, *cidr, *gw, Some(*dns)),
            _ => return None,
        };
        if !valid_iface(iface) {
            return None;
        }
        let (addr, prefix) = parse_cidr(cidr)?;
        let dns = match dns {
            Some(d) => Some(d.parse().ok()?),
            None => None,
        };
        return Some(NetConfig::Static(StaticNet {
            iface: iface.to_string(),
            addr,
            prefix,
            gateway: gw.parse().ok()?,
            dns,
        }));
    }
    valid_iface(value).then(|| NetConfig::DhcpOn(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_registries() {
        let (cfg, errs) = parse("cellos.registry.insecure=10.0.2.2:5000,registry.lan");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(cfg.insecure_registries, ["10.0.2.2:5000", "registry.lan"]);
        assert!(cfg.to_env().contains(&(
            env::INSECURE_REGISTRIES.into(),
            "10.0.2.2:5000,registry.lan".into()
        )));
        for bad in ["", "a_b", "host:0", "host:99999", "h/x", "10.0.2.2:5000,"] {
            let (cfg, errs) = parse(&format!("cellos.registry.insecure={bad}"));
            assert_eq!(errs.len(), 1, "{bad:?}");
            assert!(cfg.insecure_registries.is_empty(), "{bad:?}");
        }
        assert!(parse("")
            .0
            .to_env()
            .iter()
            .all(|(k, _)| k != env::INSECURE_REGISTRIES));
    }

    #[test]
    fn defaults_on_empty_cmdline() {
        let (cfg, errs) = parse("");
        assert_eq!(cfg, BootConfig::default());
        assert_eq!(cfg.mode, Mode::Prod);
        assert_eq!(cfg.net, NetConfig::Dhcp);
        assert!(errs.is_empty());
    }

    #[test]
    fn a_peer_interface_has_a_name_and_an_address() {
        let (cfg, errs) = parse("cellos.net.peer=eth1:192.168.77.11/24");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            cfg.peer,
            Some(PeerNet {
                iface: "eth1".into(),
                addr: Ipv4Addr::new(192, 168, 77, 11),
                prefix: 24,
            })
        );
        assert_eq!(cfg.net, NetConfig::Dhcp, "the uplink is unchanged");
        for bad in [
            "eth1",
            "eth1:192.168.77.11",
            "eth1:192.168.77.11/33",
            ":10.0.0.1/8",
            "a/b:10.0.0.1/8",
            "eth1:300.1.1.1/24",
        ] {
            let (cfg, errs) = parse(&format!("cellos.net.peer={bad}"));
            assert_eq!(cfg.peer, None, "{bad}");
            assert!(
                matches!(&errs[..], [CmdlineError::BadValue { key, .. }] if key == key::NET_PEER),
                "{bad}: {errs:?}"
            );
        }
    }

    #[test]
    fn an_extra_ca_is_base64_der_and_reaches_services() {
        let (cfg, errs) = parse("cellos.ca=MIIBdz+/CCAR2g==");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(cfg.ca.as_deref(), Some("MIIBdz+/CCAR2g=="));
        assert!(cfg
            .to_env()
            .contains(&(env::CA.to_string(), "MIIBdz+/CCAR2g==".to_string())));
        for bad in ["cellos.ca", "cellos.ca=", "cellos.ca=-----BEGIN"] {
            let (cfg, errs) = parse(bad);
            assert_eq!(cfg.ca, None, "{bad}");
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
        }
    }

    #[test]
    fn full_cmdline() {
        let line = "BOOT_IMAGE=/vmlinuz console=ttyS0 panic=1 cellos.farm=7 \
                    cellos.ledger=http://10.0.2.2:8080 cellos.enroll=abc.def \
                    cellos.mode=dev cellos.debug cellos.net=eth1 quiet\n";
        let (cfg, errs) = parse(line);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(cfg.farm, Some(7));
        assert_eq!(cfg.ledger.as_deref(), Some("http://10.0.2.2:8080"));
        assert_eq!(cfg.enroll.as_deref(), Some("abc.def"));
        assert_eq!(cfg.mode, Mode::Dev);
        assert!(cfg.debug);
        assert_eq!(cfg.net, NetConfig::DhcpOn("eth1".into()));
    }

    #[test]
    fn bad_farm_keeps_default_and_says_why() {
        let (cfg, errs) = parse("cellos.farm=abc");
        assert_eq!(cfg.farm, None);
        assert_eq!(errs.len(), 1);
        assert_eq!(
            errs[0].to_string(),
            "bad cellos.farm=\"abc\": expected a farm id (unsigned integer)"
        );
        let (cfg, errs) = parse("cellos.farm=-1 cellos.farm");
        assert_eq!(cfg.farm, None);
        assert_eq!(errs.len(), 2);
        let (cfg, errs) = parse("cellos.farm=4294967296");
        assert_eq!(cfg.farm, None);
        assert_eq!(errs.len(), 1);
    }

    #[test]
    fn last_valid_occurrence_wins() {
        let (cfg, errs) = parse("cellos.farm=1 cellos.farm=2 cellos.farm=x");
        assert_eq!(cfg.farm, Some(2));
        assert_eq!(errs.len(), 1);
    }

    #[test]
    fn ledger_urls() {
        for good in [
            "http://a",
            "https://ledger.example.org:443/x",
            "http://[::1]:8080",
        ] {
            let (cfg, errs) = parse(&format!("cellos.ledger={good}"));
            assert!(errs.is_empty(), "{good}");
            assert_eq!(cfg.ledger.as_deref(), Some(good));
        }
        for bad in ["ftp://a", "http://", "10.0.2.2:8080", "https://:80"] {
            let (cfg, errs) = parse(&format!("cellos.ledger={bad}"));
            assert_eq!(cfg.ledger, None, "{bad}");
            assert_eq!(errs.len(), 1, "{bad}");
        }
        let (cfg, errs) = parse("cellos.ledger");
        assert_eq!(cfg.ledger, None);
        assert_eq!(
            errs[0].to_string(),
            format!("bad cellos.ledger=\"\": expected {LEDGER_EXPECTED}")
        );
    }

    #[test]
    fn mode_and_debug() {
        assert_eq!(parse("cellos.mode=test").0.mode, Mode::Test);
        let (cfg, errs) = parse("cellos.mode=staging");
        assert_eq!(cfg.mode, Mode::Prod);
        assert_eq!(errs.len(), 1);
        assert!(parse("cellos.debug=1").0.debug);
        assert!(!parse("cellos.debug=0").0.debug);
        assert!(!parse("cellos.debug cellos.debug=0").0.debug);
        let (cfg, errs) = parse("cellos.debug=maybe");
        assert!(!cfg.debug);
        assert_eq!(errs.len(), 1);
    }

    #[test]
    fn net_variants() {
        assert_eq!(parse("cellos.net=dhcp").0.net, NetConfig::Dhcp);
        let (cfg, errs) = parse("cellos.net=static:eth0,192.168.1.10/24,192.168.1.1,1.1.1.1");
        assert!(errs.is_empty());
        assert_eq!(
            cfg.net,
            NetConfig::Static(StaticNet {
                iface: "eth0".into(),
                addr: Ipv4Addr::new(192, 168, 1, 10),
                prefix: 24,
                gateway: Ipv4Addr::new(192, 168, 1, 1),
                dns: Some(Ipv4Addr::new(1, 1, 1, 1)),
            })
        );
        let (cfg, _) = parse("cellos.net=static:eth0,10.0.0.2/8,10.0.0.1");
        assert!(matches!(
            cfg.net,
            NetConfig::Static(StaticNet {
                dns: None,
                prefix: 8,
                ..
            })
        ));
        for bad in [
            "static:eth0,10.0.0.2,10.0.0.1",
            "static:eth0,10.0.0.2/33,10.0.0.1",
            "static:eth0,10.0.0.2/24",
            "static:,10.0.0.2/24,10.0.0.1",
            "static:eth0,10.0.0.2/24,gw",
            "static:eth0,10.0.0.2/24,10.0.0.1,dns",
            "averyveryverylongname0",
            "",
        ] {
            let (cfg, errs) = parse(&format!("cellos.net={bad}"));
            assert_eq!(cfg.net, NetConfig::Dhcp, "{bad}");
            assert_eq!(errs.len(), 1, "{bad}");
        }
    }

    #[test]
    fn unknown_keys() {
        let (cfg, errs) = parse("foo=bar cellosx=1 cellos.colour=blue");
        assert_eq!(cfg, BootConfig::default());
        assert_eq!(
            errs,
            vec![CmdlineError::UnknownKey {
                key: "cellos.colour".into()
            }]
        );
        assert_eq!(errs[0].to_string(), "unknown key cellos.colour (ignored)");
    }

    #[test]
    fn quotes_group_words() {
        let (cfg, errs) = parse("dyndbg=\"file x +p\" cellos.enroll=\"tok en\" cellos.farm=\"3\"");
        assert!(errs.is_empty());
        assert_eq!(cfg.enroll.as_deref(), Some("tok en"));
        assert_eq!(cfg.farm, Some(3));
    }

    #[test]
    fn env_carries_config() {
        let (cfg, _) = parse("cellos.farm=9 cellos.ledger=http://l cellos.debug");
        let env = cfg.to_env();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get(env::FARM), Some("9"));
        assert_eq!(get(env::LEDGER), Some("http://l"));
        assert_eq!(get(env::ENROLL), None);
        assert_eq!(get(env::MODE), Some("prod"));
        assert_eq!(get(env::DEBUG), Some("1"));
        assert_eq!(get(env::DISKS), None);
        let (cfg, errs) = parse("cellos.disks=wipe cellos.selftest=volume-quota cellos.disks=all");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(
            errs[0].to_string(),
            "bad cellos.disks=\"all\": expected keep or wipe"
        );
        let env = cfg.to_env();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get(env::DISKS), Some("wipe"));
        assert_eq!(get(env::SELFTEST), Some("volume-quota"));
    }
}
