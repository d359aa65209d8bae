#!/usr/bin/env bash
# A demo VM on the local cluster (npm run cluster:up): see test/guest/demo-vm.ts.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f dist/test/guest/demo-vm.js ] || npm run build >/dev/null
exec node dist/test/guest/demo-vm.js "$@"
