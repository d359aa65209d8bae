#!/usr/bin/env bash
# Stops every process `npm run cluster:up` started. Keeps the data under
# .cluster/ unless --purge is given.
set -uo pipefail
cd "$(dirname "$0")/.."
STATE="$(pwd)/.cluster"
[ -d "$STATE/pids" ] || { echo "no local cluster is running"; exit 0; }

stop_one() {
  local f=$1 pid
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    echo "stopped $(basename "$f")"
  fi
  rm -f "$f"
}
# Agents and controllers first, etcd last.
for f in "$STATE"/pids/agent-* "$STATE"/pids/controller*; do [ -f "$f" ] && stop_one "$f"; done
[ -f "$STATE/pids/etcd" ] && stop_one "$STATE/pids/etcd"
# Frontends and storage daemons outlive their agents on purpose; stop them too.
for f in "$STATE"/node*/frontends/*.json; do
  [ -f "$f" ] || continue
  pid=$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$f")
  if [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; then
    # Let it flush to the replicas before their daemon goes away.
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "stopped frontend $(basename "$f" .json)"
  fi
  rm -f "$f"
done
for f in "$STATE"/node*/qsd/qsd.pid; do
  [ -f "$f" ] || continue
  kill -TERM "$(cat "$f")" 2>/dev/null && echo "stopped qemu-storage-daemon of $(basename "$(dirname "$(dirname "$f")")")"
done
if [ "${1:-}" = "--purge" ]; then
  rm -rf "$STATE"
  echo "removed $STATE"
fi
echo "local cluster stopped"
