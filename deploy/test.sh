#!/usr/bin/env bash
# `npm test`: installs what the tests need on a fresh Debian 12, checks that the
# generated code is current, and runs the whole suite (unit, then integration
# against real etcd, gRPC and qemu-img processes that the tests start and stop).
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh
bash deploy/gen-check.sh
echo "==> type-checking sources and tests"
npx tsc -p tsconfig.test.json

report=$(mktemp)
trap 'rm -f "$report"' EXIT
status=0
npx vitest run --reporter=default --reporter=json --outputFile.json="$report" "$@" || status=$?
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  console.log(`tests: ${r.numPassedTests} passed, ${r.numFailedTests} failed` + (r.numPendingTests ? `, ${r.numPendingTests} skipped` : ""));
' "$report" || true
exit $status
