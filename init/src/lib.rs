//! cellos-init: PID 1 of a cellos node.
//!
//! Init mounts the kernel filesystems, loads modules for the hardware it finds (no udev),
//! brings up the uplink by DHCP (`cellos-dhcp`), starts the manifest's services and supervises them, reaps
//! orphans, and on a shutdown request stops everything in order and powers off or reboots.
//! It must never panic and never exit: every failure is a console line and a retry or a skip.
//!
//! The crate is a library plus a thin binary so that the decision logic (coldplug, service
//! order, backoff, supervision) is unit-tested on the host,
//! and in the `init` binary only the wiring is left. What init shares with the image builder
//! and cellosd (cmdline, environment names, run paths, the module index) is in `cellos-boot`,
//! so nothing depends on this crate. Every syscall, netlink message send and mount is in
//! [`sys`]; the rest is plain code.

pub mod backoff;
pub mod bootcfg;
pub mod console;
pub mod kmod;
pub mod manifest;
pub mod net;
pub mod netlink;
pub mod power;
pub mod supervisor;
pub mod sys;
