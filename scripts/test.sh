#!/usr/bin/env bash
# Runs every check and every test of the workspace: formatting, clippy, unit tests,
# host integration tests (real ledger processes over HTTP) and the end-to-end tests
# (real images booted in QEMU). Tests build in release mode: the QEMU guests run
# our release binaries, and the ledger crash test wants realistic speed.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --release -- -D warnings
echo "== cargo test"
cargo test --workspace --release -- --test-threads="${CELLOS_TEST_THREADS:-2}"
