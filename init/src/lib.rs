//! cellos-init: PID 1 of a cellos node.
//!
//! Init mounts the kernel filesystems, loads modules for the hardware it finds (no udev),
//! brings up the uplink by DHCP, starts the manifest's services and supervises them, reaps
//! orphans, and on a shutdown request stops everything in order and powers off or reboots.
//! It must never panic and never exit: every failure is a console line and a retry or a skip.
//!
//! The crate is a library plus a thin binary so that the decision logic (cmdline, alias
//! matching, dependency order, backoff, supervision, DHCP state) is unit-tested on the host,
//! and so the node agent can read the same boot config through [`cmdline`]. Every syscall,
//! netlink message send and mount is in [`sys`]; the rest is plain code.

pub mod backoff;
pub mod bootcfg;
pub mod cmdline;
pub mod console;
pub mod dhcp;
pub mod glob;
pub mod kmod;
pub mod manifest;
pub mod net;
pub mod netlink;
pub mod power;
pub mod supervisor;
pub mod sys;
