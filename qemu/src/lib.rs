//! cellos-qemu: boots cellos images in QEMU for tests and developers.
//!
//! A [`Config`] says how much machine (memory, CPUs, accelerator), how it
//! boots (direct kernel, PXE over QEMU's built-in TFTP, or a disk image on a USB
//! stick, each under BIOS or UEFI), which disks
//! it has (SSD or HDD as the guest sees them), which host ports forward
//! into it, and whether a second NIC joins a [`Segment`] shared with other
//! guests (the wire between nodes, captured). [`Vm::start`] runs QEMU with no display, the serial console
//! captured to a file and a QMP socket; [`Vm::wait_for`] is an expect-style
//! wait on console lines whose errors carry the console tail, so a hang or a
//! panic in a test reads as a clear failure instead of a stuck CI job.
//!
//! A `Vm` never outlives its owner: dropping it kills QEMU.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod args;
mod config;
mod error;
mod segment;
mod sys;
mod vm;

pub use config::{Accel, Boot, Config, Disk, DiskKind, DiskSource, Firmware, HostFwd, Protocol};
pub use error::{Error, Result};
pub use regex::Regex;
pub use segment::{Frame, Segment, SegmentPort};
pub use vm::{Pattern, Vm};
