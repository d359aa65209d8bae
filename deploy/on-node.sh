#!/usr/bin/env bash
# Runs a command "on" a host of the local cluster (npm run cluster:up): inside that
# host's mount namespace, where its volume frontends' sockets are
# (/run/stowage/volumes/VOL.sock is the same path on every host, yet a different
# socket on each, as on real machines).
#
#   bash deploy/on-node.sh node1 qemu-io -f raw -c 'write -P 0x5a 0 1M' 'nbd+unix:///vol1?socket=/run/stowage/volumes/vol1.sock'
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  echo "usage: bash deploy/on-node.sh NODE COMMAND [ARGS...]   (NODE: node1, node2 or node3)" >&2
  exit 2
fi
node=$1; shift
pidfile=".cluster/pids/libvirtd-$node"
if [ ! -f "$pidfile" ] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  if [ -d ".cluster/$node" ]; then
    # Started with STOWAGE_NO_LIBVIRT=1: no namespace; the sockets are under .cluster/NODE/run.
    exec "$@"
  fi
  echo "no host $node in the local cluster (is it up? npm run cluster:up)" >&2
  exit 1
fi
exec nsenter "--mount=/proc/$(cat "$pidfile")/ns/mnt" -- "$@"
