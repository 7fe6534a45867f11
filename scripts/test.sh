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
echo "== cargo deny: licenses, duplicate versions, sources (deny.toml)"
cargo deny check licenses bans sources
# Advisories need the RustSec database, a git repository on GitHub. Where the
# network reaches crates.io only (as on this project's machines) it cannot be
# fetched, so the check runs only when a copy is on the machine (then offline)
# or GitHub answers, and otherwise says plainly that it did not run.
advisory_dbs="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
if [ -n "$(ls -A "$advisory_dbs" 2>/dev/null)" ]; then
  echo "== cargo deny: advisories (the RustSec database in $advisory_dbs, not updated)"
  cargo deny --offline check advisories
elif timeout 20 git ls-remote https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
  echo "== cargo deny: advisories"
  cargo deny check advisories
else
  echo "== cargo deny: advisories NOT checked: no RustSec database on this machine and GitHub is unreachable"
fi
echo "== cargo build --release (the node binaries the images carry)"
cargo build --release --workspace
echo "== unit and host integration tests"
cargo test --workspace --release --exclude cellos-tests --exclude cellos-fuzz
echo "== fuzz corpora and crash regressions, replayed (scripts/fuzz.sh fuzzes)"
cargo test --release -p cellos-fuzz
echo "== end-to-end tests (QEMU); figures are printed"
cargo test --release -p cellos-tests -- --show-output
