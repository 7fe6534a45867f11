//! cellos-qemu.
