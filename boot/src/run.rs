//! Paths under `/run` (a tmpfs) that init and cellosd share.

/// The directory, as a literal the paths below are built from.
macro_rules! dir {
    () => {
        "/run/cellos"
    };
}

/// Where cellos keeps what lives only until the next boot.
pub const DIR: &str = dir!();
/// Holds the boot disk's kernel name (e.g. `sda`) once init has found it: cellosd reads it
/// when it is restarted without [`crate::env::BOOT_DEVICE`].
pub const BOOT_DEVICE_FILE: &str = concat!(dir!(), "/boot-device");
/// Where init records how processes it reaped but did not start ended, one file per
/// pid (`exit <code>` or `signal <number>`): a container's init is such an orphan
/// (crun starts it detached), and cellosd reads its exit here for the restart policy.
pub const EXITS_DIR: &str = concat!(dir!(), "/exits");
/// Where init mounts the boot stick's partition while it reads [`crate::stick::CONFIG_FILE`].
pub const STICK_MOUNT: &str = concat!(dir!(), "/boot");
