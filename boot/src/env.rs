//! Environment variable names under which init hands the boot to its services (cellosd
//! reads them). The first nine carry the cmdline ([`crate::cmdline::BootConfig::to_env`]);
//! the others say what init itself found.

/// Farm id, absent when unset.
pub const FARM: &str = "CELLOS_FARM";
/// Ledger URL, absent when unset.
pub const LEDGER: &str = "CELLOS_LEDGER";
/// Enrollment token, absent when unset.
pub const ENROLL: &str = "CELLOS_ENROLL";
/// `dev`, `test` or `prod`.
pub const MODE: &str = "CELLOS_MODE";
/// `1` or `0`.
pub const DEBUG: &str = "CELLOS_DEBUG";
/// `keep` or `wipe`, absent when unset.
pub const DISKS: &str = "CELLOS_DISKS";
/// A self-test's name, absent when unset.
pub const SELFTEST: &str = "CELLOS_SELFTEST";
/// An extra CA certificate (base64 DER), absent when unset.
pub const CA: &str = "CELLOS_CA";
/// Registries pulled from over plain HTTP (`host[:port]`, comma separated), absent
/// when none.
pub const INSECURE_REGISTRIES: &str = "CELLOS_INSECURE_REGISTRIES";
/// CLOCK_BOOTTIME in ms when init started; absent when a service is run by hand.
pub const INIT_START: &str = "CELLOS_INIT_START";
/// The boot disk's kernel name (e.g. `sda`) after a USB boot, absent after a PXE boot:
/// storage must never format it. Init also writes it to [`crate::run::BOOT_DEVICE_FILE`].
pub const BOOT_DEVICE: &str = "CELLOS_BOOT_DEVICE";
