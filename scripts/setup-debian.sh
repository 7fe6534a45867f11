#!/usr/bin/env bash
# Prepares a Debian 12 machine for cellos: the packages the image builder, QEMU runs
# and tests need. Idempotent; run as root (or with sudo available).
#
# Installing packages is not enough: apt may remove one package to install another
# (a newer qemu-utils from backports conflicts with bookworm's qemu-system-x86, and
# apt silently removes it). So after installing, every program and file the project
# runs is checked, what is missing is reinstalled, and the script fails naming what
# is still missing. `--check` only checks (exit 1 and the list when anything is
# missing); it never installs.
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
  e2fsprogs         # mkfs.ext4: the storage tests' foreign disk
  binutils          # objcopy: the USB image's unified kernel image (UEFI)
  mtools            # the USB image's FAT partition, without root or loop devices
  syslinux syslinux-common  # the USB image's BIOS boot (installer, gptmbr.bin)
  cpio zstd         # inspecting images
  ca-certificates curl
  redis-tools redis-server  # redis-cli, redis-benchmark and the side-by-side server for `cellos bench shard`
  nftables iproute2 # nft in the image (tenant networks' rulesets); nft and ip in the network host tests
  iputils-ping      # ping in the network host tests (attached workloads reach each other)
  iperf3            # `cellos bench network`: throughput through a tenant tunnel and beside it
  docker-registry   # a real OCI registry the container tests push to and nodes pull from
  chromium chromium-driver  # the explorer's browser test (headless, WebDriver)
  etcd-server       # the ledger's replicated mode: tests start a three-member cluster
  protobuf-compiler # protoc, for crates generated from .proto files
)

# What the project runs or reads, and the package that provides it. A path is a
# file; a bare name is a program looked up on PATH and in the sbin directories.
REQUIRED=(
  qemu-system-x86_64:qemu-system-x86
  qemu-img:qemu-utils
  depmod:kmod
  /bin/busybox:busybox-static
  /usr/share/qemu/OVMF.fd:ovmf
  mkfs.btrfs:btrfs-progs
  btrfs:btrfs-progs
  mkfs.ext4:e2fsprogs
  objcopy:binutils
  mcopy:mtools
  mformat:mtools
  mmd:mtools
  syslinux:syslinux
  /usr/lib/syslinux/mbr/gptmbr.bin:syslinux-common
  cpio:cpio
  zstd:zstd
  curl:curl
  dpkg-deb:dpkg
  apt-get:apt
  redis-server:redis-server
  redis-cli:redis-tools
  redis-benchmark:redis-tools
  nft:nftables
  ip:iproute2
  ping:iputils-ping
  iperf3:iperf3
  docker-registry:docker-registry
  chromium:chromium
  chromedriver:chromium-driver
  etcd:etcd-server
  protoc:protobuf-compiler
)

# cargo-deny (scripts/test.sh checks licenses, duplicate versions and sources with
# it), pinned: 0.20.2 needs rustc 1.88 or newer to build.
CARGO_DENY_VERSION=0.20.2

# Whether the pinned cargo-deny is on PATH.
cargo_deny_ok() {
  [ "$(cargo deny --version 2>/dev/null)" = "cargo-deny $CARGO_DENY_VERSION" ]
}

found() {
  case "$1" in
    /*) [ -e "$1" ] ;;
    *) PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" command -v "$1" >/dev/null 2>&1 ;;
  esac
}

# Prints "thing:package" for everything missing.
missing_required() {
  local entry
  for entry in "${REQUIRED[@]}"; do
    found "${entry%%:*}" || echo "$entry"
  done
}

if [ "${1:-}" = "--check" ]; then
  gone=$(missing_required)
  cargo_deny_ok || gone="$gone cargo-deny@$CARGO_DENY_VERSION:cargo-install"
  if [ -n "$gone" ]; then
    echo "setup: missing: $(echo "$gone" | tr '\n' ' ')" >&2
    exit 1
  fi
  echo "setup: every program cellos runs is present"
  exit 0
fi

apt_install() {
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends --allow-downgrades "$@"
}

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
updated=0
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  updated=1
  # QEMU's packages must come from one release: a qemu-utils from backports
  # conflicts with bookworm's qemu-system-x86, and apt would remove it. Pin
  # qemu-utils to the version of qemu-system-x86 that is (or will be) installed.
  args=()
  for p in "${missing[@]}"; do
    [ "$p" = qemu-utils ] || args+=("$p")
  done
  qemu_version=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
  [ -n "$qemu_version" ] || qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  utils_version=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
  if [ -n "$qemu_version" ] && [ "$qemu_version" != "(none)" ] && [ "$utils_version" != "$qemu_version" ]; then
    [ -z "$utils_version" ] || echo "setup: qemu-utils $utils_version does not match qemu-system-x86 $qemu_version; installing qemu-utils=$qemu_version"
    args+=("qemu-utils=$qemu_version")
  fi
  apt_install "${args[@]}"
fi

# Reinstall whatever apt removed or a previous step left out, then check again.
gone=$(missing_required)
if [ -n "$gone" ]; then
  pkgs=$(echo "$gone" | cut -d: -f2 | sort -u | tr '\n' ' ')
  echo "setup: missing after install: $(echo "$gone" | cut -d: -f1 | tr '\n' ' '); reinstalling $pkgs"
  [ "$updated" = 1 ] || $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  apt_install --reinstall $pkgs || true
  gone=$(missing_required)
  if [ -n "$gone" ]; then
    echo "setup: still missing: $(echo "$gone" | tr '\n' ' ')(program:package); install them and run this again" >&2
    exit 1
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing: install a Rust toolchain (1.80 or newer, e.g. with rustup) and run this again" >&2
  exit 1
fi
if ! cargo_deny_ok; then
  echo "setup: installing cargo-deny $CARGO_DENY_VERSION (compiles for a few minutes)"
  nice cargo install --locked cargo-deny --version "$CARGO_DENY_VERSION"
  cargo_deny_ok || { echo "setup: cargo-deny $CARGO_DENY_VERSION is not on PATH after installing it (is ~/.cargo/bin on PATH?)" >&2; exit 1; }
fi
echo "setup: ok ($(cargo --version), $(cargo deny --version), $(qemu-system-x86_64 --version | head -n1), $(qemu-img --version | head -n1))"
