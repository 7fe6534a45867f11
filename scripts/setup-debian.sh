#!/usr/bin/env bash
# Prepares a Debian 12 machine for cellos: the packages the image builder, QEMU runs
# and tests need. Idempotent; run as root (or with sudo available).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PACKAGES=(
  qemu-system-x86   # boots node images (TCG here, KVM where it works)
  qemu-utils        # qemu-img for VM disks
  kmod              # depmod for the image's module tree
  busybox-static    # a debug shell in the image
  ovmf              # UEFI firmware for QEMU
  ipxe-qemu         # iPXE option ROMs for PXE boot
  btrfs-progs       # storage pools in the image
  binutils          # objcopy: the USB image's unified kernel image (UEFI)
  mtools            # the USB image's FAT partition, without root or loop devices
  syslinux syslinux-common  # the USB image's BIOS boot (installer, gptmbr.bin)
  cpio zstd         # inspecting images
  ca-certificates curl
  redis-tools redis-server  # redis-cli, redis-benchmark and the side-by-side server for `cellos bench shard`
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  # qemu-utils may come from backports on some machines: never downgrade it.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing: install a Rust toolchain (1.80 or newer, e.g. with rustup) and run this again" >&2
  exit 1
fi
echo "setup: ok ($(cargo --version), $(qemu-system-x86_64 --version | head -n1))"
