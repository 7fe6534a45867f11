//! cellos-boot: every contract between the image builder, init (PID 1) and cellosd, written
//! once.
//!
//! Why a crate of its own: the image builder writes what init reads (the cmdline, the boot
//! stick's partition name and `cellos.cfg`, the module index depmod made), and init hands
//! cellosd what it found (`CELLOS_*` variables, files under `/run/cellos`). When each side
//! typed the names itself they were held together only by tests; here each key, name, path
//! and parser is defined once, and all three crates depend on this one instead of on each
//! other (nothing depends on the PID 1 crate).
//!
//! It holds names and pure parsers only: no syscalls, no I/O beyond reading the module index
//! files it is pointed at, nothing that would pull a dependency into init.

pub mod cmdline;
pub mod env;
mod glob;
pub mod modules;
pub mod run;
pub mod stick;
