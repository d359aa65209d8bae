#!/usr/bin/env bash
# Fails when the generated code in gen/ does not match proto/ (someone edited a
# .proto file without running `npm run gen`, or edited generated code by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
npx buf lint
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
npx buf generate --output "$tmp" >/dev/null
if ! diff -r "$tmp/gen" gen >/dev/null; then
  echo "gen/ is stale: run 'npm run gen' and commit the result" >&2
  diff -r "$tmp/gen" gen | head -20 >&2
  exit 1
fi
echo "gen/ matches proto/"
