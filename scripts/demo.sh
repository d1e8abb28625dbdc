#!/usr/bin/env bash
# The out-of-the-box demo: a simulated pool with seeded VMs, a local repository, a full
# backup of every VM, guest writes, a CBT incremental, verify, and a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo run --release --bin xenvault -- demo "$@"
