#!/usr/bin/env bash
# The whole test suite: installs what tests need, then runs every crate's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --bins
# cargo test (not nextest): test binaries share one S3/Azure server per process.
cargo test --workspace --no-fail-fast "$@"
