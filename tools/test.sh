#!/usr/bin/env bash
# The test command of README.md: sets up this machine for the tests, then runs
# formatting, lints and every test of the workspace (debug build).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-test-machine.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
