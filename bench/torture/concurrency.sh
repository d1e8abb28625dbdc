#!/usr/bin/env bash
# Concurrency torture, long form: ROUNDS (default 100) backups of each of two sources into
# one repository ∥ a forget+prune loop ∥ copy into a second repository (with its own
# prune loop) ∥ verify ∥ restores of points that must exist; every other prune waits for a
# gap between backups (gc deletes only then). At the end every committed point not
# forgotten restores exactly, verify is clean and gc deleted some packs.
# BACKEND=local (default), s3 or both. Prints the figures of each run
# (`torture concurrency (backend): ...`); exits 1 when a point is lost or no pack was deleted.
set -eu -o pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-100}
case ${BACKEND:-local} in
local) filter=backups_prune_copy_verify_lose_nothing_local ;;
s3) filter=backups_prune_copy_verify_lose_nothing_s3 ;;
both) filter=backups_prune_copy_verify_lose_nothing ;;
*) echo "BACKEND must be local, s3 or both" >&2; exit 2 ;;
esac
TORTURE_ROUNDS=$ROUNDS cargo test -q -p xenvault-repo --test torture "$filter" -- --nocapture 2>&1 |
  grep -E '^torture|panicked|lost:|test result'
