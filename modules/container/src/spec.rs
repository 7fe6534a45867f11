//! The OCI runtime spec (config.json) a container runs under, built with oci-spec.
//!
//! Everything a tenant controls arrives here already validated by the ledger's
//! `ContainerSpec::check` (arguments, environment, mount paths) and the image's
//! config; what is decided here is what the tenant does not control: its own pid,
//! mount, uts, ipc and cgroup namespaces and the network namespace its attachment
//! made; cgroup v2 limits from what it reserved; no new privileges; a short list of
//! capabilities (Docker's default set, which a shell, a web server and `ping` need,
//! without `MKNOD`, `SYS_CHROOT` or `AUDIT_WRITE`); a seccomp filter refusing the
//! system calls that reach past a container (modules, kexec, reboot, clocks, keyrings,
//! bpf, perf, namespaces and mounts); the runtime's usual masked and read-only
//! `/proc` and `/sys` paths. The root file system can be mounted read-only; volumes
//! are bind mounts without devices or setuid.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder,
    LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder, Mount, MountBuilder,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::{ContainerError, ImageConfig};

/// The CPU period the quota is a share of (100 ms, the kernel's default).
const CPU_PERIOD: u64 = 100_000;
/// Processes and threads a container may have.
pub const PIDS_LIMIT: i64 = 4096;

/// What one container needs from the node, beyond its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    /// The container's name on the node (runtime id, cgroup, hostname).
    pub id: String,
    /// Its root file system (a writable snapshot of the image's layers).
    pub rootfs: PathBuf,
    /// The command; empty: the image's entrypoint and cmd.
    pub cmd: Vec<String>,
    /// `KEY=value`, added to and overriding the image's.
    pub env: Vec<(String, String)>,
    pub cpu: u32,
    pub memory: u64,
    /// The network namespace it joins (its attachment to a tenant network).
    pub netns: PathBuf,
    /// (host directory, path in the container).
    pub mounts: Vec<(PathBuf, String)>,
    pub read_only: bool,
}

/// System calls a container never makes: what loads code into the kernel or
/// replaces it, changes the node's clock, keyrings or swap, traces other processes,
/// or builds namespaces and mounts of its own.
const REFUSED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "syslog",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "vm86",
    "vm86old",
];

/// Docker's default capability set less `MKNOD` (the unpacker refuses device nodes
/// anyway), `SYS_CHROOT` and `AUDIT_WRITE`.
const CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::NetRaw,
    Capability::Kill,
    Capability::Setfcap,
];

fn bad(reason: impl Into<String>) -> ContainerError {
    ContainerError::Spec(reason.into())
}

fn built<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, ContainerError> {
    r.map_err(|e| bad(e.to_string()))
}

/// The process's arguments: the workload's command, else the image's entrypoint and
/// cmd (a workload command replaces both, as `docker run IMAGE CMD...` replaces cmd
/// and `--entrypoint` together would).
pub fn args(cmd: &[String], image: &ImageConfig) -> Result<Vec<String>, ContainerError> {
    let args: Vec<String> = if cmd.is_empty() {
        image.entrypoint.iter().chain(&image.cmd).cloned().collect()
    } else {
        cmd.to_vec()
    };
    if args.is_empty() {
        return Err(bad(
            "nothing to run: the workload has no cmd and the image no entrypoint or cmd",
        ));
    }
    Ok(args)
}

/// The image's environment with the workload's on top (same name: the workload's).
pub fn env(image: &[String], workload: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<String> = image
        .iter()
        .filter(|kv| {
            let name = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
            !workload.iter().any(|(k, _)| k == name)
        })
        .cloned()
        .collect();
    if !out.iter().any(|kv| kv.starts_with("PATH=")) && !workload.iter().any(|(k, _)| k == "PATH") {
        out.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    out.extend(workload.iter().map(|(k, v)| format!("{k}={v}")));
    out
}

/// The image's `user` (`uid`, `uid:gid`, `name` or `name:group`) as numbers, names
/// looked up in the root file system's /etc/passwd and /etc/group.
pub fn user(spec: Option<&str>, rootfs: &Path) -> Result<(u32, u32), ContainerError> {
    let Some(spec) = spec.filter(|s| !s.is_empty()) else {
        return Ok((0, 0));
    };
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    // Reads a file of the image (never follows it out: it is the image's root,
    // read as data, and only the first 1 MiB).
    let table = |file: &str| -> Vec<Vec<String>> {
        let text = std::fs::read(rootfs.join(file)).unwrap_or_default();
        String::from_utf8_lossy(&text[..text.len().min(1 << 20)])
            .lines()
            .map(|l| l.split(':').map(str::to_string).collect())
            .collect()
    };
    let lookup = |file: &str, name: &str, col: usize| -> Option<u32> {
        table(file)
            .iter()
            .find(|f| f.first().map(String::as_str) == Some(name))
            .and_then(|f| f.get(col)?.parse().ok())
    };
    let uid = match u.parse() {
        Ok(n) => n,
        Err(_) => lookup("etc/passwd", u, 2)
            .ok_or_else(|| bad(format!("the image's user {u:?} is not in its /etc/passwd")))?,
    };
    let gid = match g {
        Some(g) => match g.parse() {
            Ok(n) => n,
            Err(_) => lookup("etc/group", g, 2)
                .ok_or_else(|| bad(format!("the image's group {g:?} is not in its /etc/group")))?,
        },
        // The user's primary group, when the image names one.
        None => table("etc/passwd")
            .iter()
            .find(|f| f.get(2).and_then(|s| s.parse::<u32>().ok()) == Some(uid))
            .and_then(|f| f.get(3)?.parse().ok())
            .unwrap_or(0),
    };
    Ok((uid, gid))
}

fn volume_mount(source: &Path, dest: &str) -> Result<Mount, ContainerError> {
    built(
        MountBuilder::default()
            .destination(dest)
            .typ("bind")
            .source(source)
            .options(
                ["rbind", "rw", "nosuid", "nodev"]
                    .map(String::from)
                    .to_vec(),
            )
            .build(),
    )
}

/// The runtime spec for `c` running `image`.
pub fn runtime_spec(c: &RunConfig, image: &ImageConfig) -> Result<Spec, ContainerError> {
    let (uid, gid) = user(image.user.as_deref(), &c.rootfs)?;
    let caps: HashSet<Capability> = CAPABILITIES.iter().copied().collect();
    let capabilities = built(
        LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps)
            .inheritable(HashSet::new())
            .ambient(HashSet::new())
            .build(),
    )?;
    let process = built(
        ProcessBuilder::default()
            .terminal(false)
            .user(built(UserBuilder::default().uid(uid).gid(gid).build())?)
            .args(args(&c.cmd, image)?)
            .env(env(&image.env, &c.env))
            .cwd(image.working_dir.clone().unwrap_or_else(|| "/".into()))
            .no_new_privileges(true)
            .capabilities(capabilities)
            .build(),
    )?;
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .map(|t| built(LinuxNamespaceBuilder::default().typ(t).build()))
    .chain(std::iter::once(built(
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Network)
            .path(c.netns.clone())
            .build(),
    )))
    .collect::<Result<Vec<_>, _>>()?;
    let memory = i64::try_from(c.memory).map_err(|_| bad("memory does not fit a limit"))?;
    let resources = built(
        LinuxResourcesBuilder::default()
            // No swap beyond the limit: an over-limit container is OOM-killed, not
            // slowed into the node's swap.
            .memory(built(
                LinuxMemoryBuilder::default()
                    .limit(memory)
                    .swap(memory)
                    .build(),
            )?)
            .cpu(built(
                LinuxCpuBuilder::default()
                    .quota(i64::from(c.cpu) * CPU_PERIOD as i64)
                    .period(CPU_PERIOD)
                    .build(),
            )?)
            .pids(built(
                LinuxPidsBuilder::default().limit(PIDS_LIMIT).build(),
            )?)
            .build(),
    )?;
    let seccomp = built(
        LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![built(
                LinuxSyscallBuilder::default()
                    .names(
                        REFUSED_SYSCALLS
                            .iter()
                            .map(|s| s.to_string())
                            .collect::<Vec<_>>(),
                    )
                    .action(LinuxSeccompAction::ScmpActErrno)
                    .errno_ret(nix::libc::EPERM as u32)
                    .build(),
            )?])
            .build(),
    )?;
    let defaults = oci_spec::runtime::Linux::default();
    let linux = built(
        LinuxBuilder::default()
            .namespaces(namespaces)
            .resources(resources)
            .cgroups_path(PathBuf::from(format!("/cellos/{}", c.id)))
            .seccomp(seccomp)
            .masked_paths(defaults.masked_paths().clone().unwrap_or_default())
            .readonly_paths(defaults.readonly_paths().clone().unwrap_or_default())
            .build(),
    )?;
    // The runtime's default mounts (proc, dev, devpts, shm, mqueue, sysfs) without its
    // cgroup v1 mount, then the volumes.
    let mut mounts: Vec<Mount> = oci_spec::runtime::get_default_mounts()
        .into_iter()
        .filter(|m| m.typ().as_deref() != Some("cgroup"))
        .collect();
    for (source, dest) in &c.mounts {
        mounts.push(volume_mount(source, dest)?);
    }
    built(
        SpecBuilder::default()
            .version("1.0.2")
            .hostname(c.id.clone())
            .root(built(
                RootBuilder::default()
                    .path(c.rootfs.clone())
                    .readonly(c.read_only)
                    .build(),
            )?)
            .process(process)
            .mounts(mounts)
            .linux(linux)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> RunConfig {
        RunConfig {
            id: "c-0123456789ab".into(),
            rootfs: dir.to_path_buf(),
            cmd: vec![],
            env: vec![("GREETING".into(), "hi".into())],
            cpu: 2,
            memory: 64 << 20,
            netns: "/run/netns/c-0123456789ab".into(),
            mounts: vec![("/pool/vol".into(), "/data".into())],
            read_only: true,
        }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/bin/httpd".into()],
            cmd: vec!["-f".into()],
            env: vec!["PATH=/bin".into(), "GREETING=hello".into()],
            working_dir: Some("/srv".into()),
            user: None,
        }
    }

    #[test]
    fn the_spec_confines_and_limits_the_container() {
        let dir = tempfile::tempdir().expect("dir");
        let spec = runtime_spec(&config(dir.path()), &image()).expect("spec");
        let v = serde_json::to_value(&spec).expect("json");
        let p = &v["process"];
        assert_eq!(p["args"], serde_json::json!(["/bin/httpd", "-f"]));
        assert_eq!(p["env"], serde_json::json!(["PATH=/bin", "GREETING=hi"]));
        assert_eq!(p["cwd"], "/srv");
        assert_eq!(p["noNewPrivileges"], true);
        let caps = p["capabilities"]["bounding"].as_array().expect("caps");
        assert!(caps.contains(&"CAP_NET_RAW".into()) && caps.len() == CAPABILITIES.len());
        assert!(!caps.contains(&"CAP_SYS_ADMIN".into()) && !caps.contains(&"CAP_MKNOD".into()));
        assert_eq!(v["root"]["readonly"], true);
        let l = &v["linux"];
        assert_eq!(l["cgroupsPath"], "/cellos/c-0123456789ab");
        assert_eq!(l["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(l["resources"]["memory"]["swap"], 64 << 20);
        assert_eq!(l["resources"]["cpu"]["quota"], 200_000);
        assert_eq!(l["resources"]["pids"]["limit"], PIDS_LIMIT);
        let ns = l["namespaces"].as_array().expect("namespaces");
        assert_eq!(ns.len(), 6);
        assert!(ns.contains(
            &serde_json::json!({"type": "network", "path": "/run/netns/c-0123456789ab"})
        ));
        assert!(!ns.iter().any(|n| n["type"] == "user"));
        let refused = l["seccomp"]["syscalls"][0]["names"]
            .as_array()
            .expect("syscalls");
        for s in [
            "mount",
            "kexec_load",
            "init_module",
            "bpf",
            "unshare",
            "ptrace",
        ] {
            assert!(refused.contains(&s.into()), "{s}");
        }
        assert_eq!(l["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        assert!(l["maskedPaths"]
            .as_array()
            .is_some_and(|m| m.contains(&"/proc/kcore".into())));
        let mounts = v["mounts"].as_array().expect("mounts");
        assert!(mounts.iter().all(|m| m["type"] != "cgroup"));
        let vol = mounts
            .iter()
            .find(|m| m["destination"] == "/data")
            .expect("volume");
        assert_eq!(vol["source"], "/pool/vol");
        assert!(vol["options"]
            .as_array()
            .is_some_and(|o| o.contains(&"nosuid".into()) && o.contains(&"nodev".into())));
    }

    #[test]
    fn the_workload_command_replaces_entrypoint_and_cmd() {
        let cmd = vec!["/bin/sh".to_string(), "-c".to_string(), "echo".to_string()];
        assert_eq!(args(&cmd, &image()).expect("args"), cmd);
        let nothing = ImageConfig::default();
        let err = args(&[], &nothing).expect_err("nothing to run").to_string();
        assert!(err.contains("nothing to run"), "{err}");
        assert!(env(&[], &[]).iter().any(|e| e.starts_with("PATH=")));
    }

    #[test]
    fn users_are_numbers_or_names_from_the_image() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir(dir.path().join("etc")).expect("etc");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:1000:1001::/srv:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").expect("group");
        let r = dir.path();
        assert_eq!(user(None, r).expect("none"), (0, 0));
        assert_eq!(user(Some("7:8"), r).expect("numbers"), (7, 8));
        assert_eq!(user(Some("web"), r).expect("name"), (1000, 1001));
        assert_eq!(user(Some("web:staff"), r).expect("names"), (1000, 50));
        assert!(user(Some("nobody"), r).is_err());
        assert!(user(Some("web:nogroup"), r).is_err());
    }
}
