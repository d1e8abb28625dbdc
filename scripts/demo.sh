#!/usr/bin/env bash
# The out-of-the-box demo: a simulated pool with seeded VMs, a local repository, a full
# backup of every VM, guest writes, a CBT incremental, verify, and a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --demo
# The dev profile (dependencies optimised, see Cargo.toml): the test command reuses this
# build instead of compiling everything a second time; benchmarks build --release.
cargo run --bin xenvault -- demo "$@"
