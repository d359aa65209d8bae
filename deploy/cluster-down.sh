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
# VMs on the hosts' libvirtds first (their QEMUs use the frontends).
for conf in "$STATE"/node*/libvirt/etc/libvirtd.conf; do
  [ -f "$conf" ] || continue
  addr=$(sed -n 's/^listen_addr = "\(.*\)"/\1/p' "$conf")
  port=$(sed -n 's/^tcp_port = "\(.*\)"/\1/p' "$conf")
  uri="qemu+tcp://$addr:$port/system"
  for d in $(virsh -c "$uri" list --name 2>/dev/null); do
    virsh -c "$uri" destroy "$d" >/dev/null 2>&1 && echo "destroyed VM $d on $addr"
  done
done
# Agents and controllers next, etcd last.
for f in "$STATE"/pids/agent-* "$STATE"/pids/controller*; do [ -f "$f" ] && stop_one "$f"; done
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
for f in "$STATE"/pids/libvirtd-*; do [ -f "$f" ] && stop_one "$f"; done
# A QEMU its daemon could not destroy.
for f in "$STATE"/node*/libvirt/run/qemu/*.pid; do
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  grep -q qemu-system "/proc/$pid/cmdline" 2>/dev/null && kill -KILL "$pid" && echo "killed QEMU $pid"
done
[ -f "$STATE/pids/etcd" ] && stop_one "$STATE/pids/etcd"
if [ "${1:-}" = "--purge" ]; then
  rm -rf "$STATE"
  echo "removed $STATE"
fi
echo "local cluster stopped"
