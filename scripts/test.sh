#!/usr/bin/env bash
# The test suite. Without arguments: the whole suite, as CI runs it: installs what tests
# need, checks formatting and clippy (warnings are errors), then runs every crate's tests.
# `--quick`: the tier for the edit-test loop: no formatting or clippy gate, and the tests
# that need servers or third-party clients (S3/SeaweedFS, Azure/Azurite, the Python SDK,
# Xen Orchestra's client) left out by name. Other arguments go to the test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=false
if [ "${1:-}" = "--quick" ]; then
  quick=true
  shift
fi
bash scripts/setup.sh
if $quick; then
  server_tests=(--skip s3 --skip azure --skip seaweedfs --skip python_sdk --skip xo_xen_api)
else
  server_tests=()
  cargo fmt --check
  cargo clippy --workspace --all-targets --quiet -- -D warnings
fi
cargo build --workspace --bins
# cargo test (not nextest): test binaries share one S3/Azure server per process.
cargo test --workspace --no-fail-fast -- "${server_tests[@]}" "$@"
