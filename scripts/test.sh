#!/usr/bin/env bash
# Runs every check and every test of the workspace: formatting, clippy, unit tests,
# host integration tests (real ledger processes over HTTP) and the end-to-end tests
# (real images booted in QEMU under TCG). Everything builds in release mode: the QEMU
# guests run the release binaries of this checkout, which the image is made from.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --release -- -D warnings
echo "== cargo build --release (the node binaries the images carry)"
cargo build --release --workspace
echo "== unit and host integration tests"
cargo test --workspace --release --exclude cellos-tests --exclude cellos-fuzz
echo "== fuzz corpora and crash regressions, replayed (scripts/fuzz.sh fuzzes)"
cargo test --release -p cellos-fuzz
echo "== end-to-end tests (QEMU); figures are printed"
cargo test --release -p cellos-tests -- --show-output
