//! The boot config as init hands it over: `CELLOS_*` environment variables taken from
//! the kernel cmdline (their names are the contract in [`cellos_boot::env`]), plus the
//! few variables only cellosd reads, for host runs and tests.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use cellos_boot::{env, run};
use cellos_ledger::FarmId;
use cellos_storage::ForeignDisks;

/// Seconds between uptime reports (default 60); for tests and labs.
pub const UPTIME_SECS: &str = "CELLOS_UPTIME_SECS";
/// Run by hand or in host tests: keep the state here and touch no disk.
pub const STATE_DIR: &str = "CELLOS_STATE_DIR";
/// Where the node API listens (host runs and tests; default 0.0.0.0:8646).
pub const API_ADDR: &str = "CELLOS_API_ADDR";
/// Where cellosd leaves what other services read (host runs point it elsewhere).
pub const RUN_DIR: &str = "CELLOS_RUN_DIR";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEnv {
    pub farm: FarmId,
    pub ledger: String,
    /// The enrollment token's text, checked later so a bad one is only a warning.
    pub enroll: Option<String>,
    pub init_start_ms: Option<u64>,
    pub uptime_every: Option<Duration>,
    /// `cellos.disks=`: what to do with disks holding foreign data.
    pub disks: ForeignDisks,
    pub boot_device: Option<String>,
    /// `cellos.selftest=`, honoured only in test mode.
    pub selftest: Option<String>,
    /// [`STATE_DIR`]: no pools, this state directory.
    pub state_dir: Option<PathBuf>,
    /// `/run/cellos`, or `CELLOS_RUN_DIR`: the shard server's links (see
    /// `workloads::prepare_shards`).
    pub run_dir: PathBuf,
    /// `CELLOS_CA` (`cellos.ca=`): one more CA to trust for an `https://` ledger, as
    /// base64 DER.
    pub ca: Option<String>,
    /// `CELLOS_API_ADDR`: where the node API listens instead of 0.0.0.0:8646.
    pub api_addr: Option<std::net::SocketAddr>,
    /// `cellos.mode=test`: short intervals (usage reports) for end-to-end tests.
    pub test_mode: bool,
    /// `cellos.registry.insecure=`: registries pulled from over plain HTTP.
    pub insecure_registries: Vec<String>,
}

impl BootEnv {
    /// Reads the config through `get` (the process environment in `main`).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<BootEnv> {
        let set = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let farm = match set(env::FARM) {
            None => bail!(
                "{} is not set: boot the node with cellos.farm=<farm id> on the kernel cmdline",
                env::FARM
            ),
            Some(v) => v.parse().map_err(|_| {
                anyhow!(
                    "{}={v:?} is not a farm id: expected a number (cellos.farm=<farm id>)",
                    env::FARM
                )
            })?,
        };
        let Some(ledger) = set(env::LEDGER) else {
            bail!(
                "{} is not set: boot the node with cellos.ledger=http://<host>:<port> on the kernel cmdline",
                env::LEDGER
            );
        };
        let uptime_every = match set(UPTIME_SECS) {
            None => None,
            Some(v) => match v.parse::<u64>() {
                Ok(s) if s > 0 => Some(Duration::from_secs(s)),
                _ => bail!("{UPTIME_SECS}={v:?} is not a number of seconds above 0"),
            },
        };
        let disks = match set(env::DISKS) {
            None => ForeignDisks::Keep,
            Some(v) => v.parse().map_err(|e| {
                anyhow!("{}: {e} (cellos.disks= on the kernel cmdline)", env::DISKS)
            })?,
        };
        let test_mode = set(env::MODE).as_deref() == Some("test");
        Ok(BootEnv {
            disks,
            boot_device: set(env::BOOT_DEVICE),
            state_dir: set(STATE_DIR).map(PathBuf::from),
            run_dir: PathBuf::from(set(RUN_DIR).unwrap_or_else(|| run::DIR.into())),
            ca: set(env::CA),
            api_addr: match set(API_ADDR) {
                None => None,
                Some(v) => Some(v.parse().map_err(|_| {
                    anyhow!("{API_ADDR}={v:?} is not an address: expected ip:port")
                })?),
            },
            selftest: set(env::SELFTEST).filter(|_| test_mode),
            farm,
            ledger,
            enroll: set(env::ENROLL),
            // Only used for the timing in one console line: a bad value means "unknown".
            init_start_ms: set(env::INIT_START).and_then(|v| v.parse().ok()),
            uptime_every,
            test_mode,
            insecure_registries: set(env::INSECURE_REGISTRIES)
                .map(|v| v.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<BootEnv> {
        BootEnv::from_env(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn full_config() {
        let e = parse(&[
            ("CELLOS_FARM", "3"),
            ("CELLOS_LEDGER", "http://10.0.2.2:8645"),
            ("CELLOS_ENROLL", "3.99.abcd"),
            ("CELLOS_INIT_START", "1234"),
            ("CELLOS_UPTIME_SECS", "5"),
            ("CELLOS_MODE", "test"),
            ("CELLOS_DISKS", "wipe"),
            ("CELLOS_BOOT_DEVICE", "/dev/sdb"),
            ("CELLOS_SELFTEST", "volume-quota"),
            ("CELLOS_INSECURE_REGISTRIES", "10.0.2.2:5000,registry.lan"),
        ])
        .expect("valid");
        assert_eq!(
            e,
            BootEnv {
                farm: 3,
                ledger: "http://10.0.2.2:8645".into(),
                enroll: Some("3.99.abcd".into()),
                init_start_ms: Some(1234),
                uptime_every: Some(Duration::from_secs(5)),
                disks: ForeignDisks::Wipe,
                boot_device: Some("/dev/sdb".into()),
                selftest: Some("volume-quota".into()),
                state_dir: None,
                run_dir: PathBuf::from(run::DIR),
                ca: None,
                api_addr: None,
                test_mode: true,
                insecure_registries: vec!["10.0.2.2:5000".into(), "registry.lan".into()],
            }
        );
    }

    #[test]
    fn minimal_config() {
        let e = parse(&[
            ("CELLOS_FARM", "1"),
            ("CELLOS_LEDGER", "http://l:1"),
            ("CELLOS_ENROLL", ""),
            ("CELLOS_SELFTEST", "volume-quota"),
        ])
        .expect("valid");
        assert_eq!(
            (e.enroll, e.init_start_ms, e.uptime_every),
            (None, None, None)
        );
        assert_eq!((e.disks, e.boot_device), (ForeignDisks::Keep, None));
        assert_eq!(e.selftest, None, "self-tests run in test mode only");
    }

    #[test]
    fn errors_say_what_to_put_on_the_cmdline() {
        let e = parse(&[("CELLOS_LEDGER", "http://l:1")]).expect_err("no farm");
        assert_eq!(
            e.to_string(),
            "CELLOS_FARM is not set: boot the node with cellos.farm=<farm id> on the kernel cmdline"
        );
        let e = parse(&[("CELLOS_FARM", "x"), ("CELLOS_LEDGER", "http://l:1")]).expect_err("bad");
        assert!(
            e.to_string().contains("CELLOS_FARM=\"x\" is not a farm id"),
            "{e}"
        );
        let e = parse(&[("CELLOS_FARM", "1")]).expect_err("no ledger");
        assert!(
            e.to_string()
                .starts_with("CELLOS_LEDGER is not set: boot the node with cellos.ledger="),
            "{e}"
        );
        let e = parse(&[
            ("CELLOS_FARM", "1"),
            ("CELLOS_LEDGER", "http://l:1"),
            ("CELLOS_UPTIME_SECS", "0"),
        ])
        .expect_err("zero");
        assert!(e.to_string().contains("CELLOS_UPTIME_SECS"), "{e}");
        let e = parse(&[
            ("CELLOS_FARM", "1"),
            ("CELLOS_LEDGER", "http://l:1"),
            ("CELLOS_DISKS", "all"),
        ])
        .expect_err("bad disks");
        assert!(e.to_string().contains("expected keep or wipe"), "{e}");
    }
}
