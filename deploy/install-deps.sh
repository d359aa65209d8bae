#!/usr/bin/env bash
# Installs what Stowage needs on Debian 12 (as root) and builds it. Idempotent:
# a second run only checks. Used by both `npm run cluster:up` and `npm test`.
set -euo pipefail
cd "$(dirname "$0")/.."

# The guest kernel and busybox build the small Linux guest of the end-to-end tests.
# debootstrap, e2fsprogs, borgbackup and restic: the dedup benchmark's corpus and its baselines.
# duperemove and xfsprogs: reflink dedup of pools (stowctl pool dedup) and its test's XFS filesystem.
PACKAGES=(etcd-server etcd-client qemu-utils qemu-system-x86 qemu-system-common libvirt-daemon-system libvirt-clients
  fio nbdkit libnbd-bin linux-image-amd64 busybox-static cpio xz-utils
  debootstrap e2fsprogs borgbackup restic duperemove xfsprogs)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${missing[*]}; run this as root or install them with apt-get" >&2
    exit 1
  fi
  echo "==> installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm ci when node_modules is missing or older than the lock file.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "==> npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

echo "==> building"
npm run --silent build
