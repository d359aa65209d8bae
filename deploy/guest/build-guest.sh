#!/usr/bin/env bash
# Builds the tiny Stowage test guest into OUTDIR:
#   OUTDIR/vmlinuz     the Debian kernel (linux-image-amd64)
#   OUTDIR/vmlinux     the same kernel uncompressed (ELF), when it has CONFIG_PVH
#                      and its payload is xz/gzip/zstd: QEMU boots it through
#                      PVH and skips the decompression, which is slow under TCG
#                      (about half the boot time). Use it when present.
#   OUTDIR/initrd.img  a gzip'd newc cpio: busybox-static, the virtio modules of
#                      that kernel and deploy/guest/init.sh as /init (the writer)
#   OUTDIR/guest.env   KVER=..., KEY=... (what was built)
# Idempotent and cached by content: when the inputs (this script, init.sh, the
# kernel, busybox and the modules) are unchanged it only prints the paths.
# Installs linux-image-amd64, busybox-static and cpio with apt-get when missing
# (needs root then). KVER=<version> picks a kernel; default: the running
# kernel's when /boot and /lib/modules have it, otherwise the newest installed.
# Usage: build-guest.sh OUTDIR
set -euo pipefail

OUTDIR=${1:?usage: build-guest.sh OUTDIR}
HERE=$(cd "$(dirname "$0")" && pwd)
MODULES=(virtio_blk virtio_pci)   # their dependencies are added from modules.dep

ensure_packages() {
  local missing=() p
  for p in linux-image-amd64 busybox-static cpio; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "build-guest: missing Debian packages: ${missing[*]} (run as root or install them)" >&2
    exit 1
  fi
  echo "build-guest: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  }
}

pick_kernel() {
  if [ -n "${KVER:-}" ]; then echo "$KVER"; return; fi
  local r
  r=$(uname -r)
  if [ -f "/boot/vmlinuz-$r" ] && [ -f "/lib/modules/$r/modules.dep" ]; then echo "$r"; return; fi
  for r in $(ls -1 /lib/modules 2>/dev/null | sort -rV); do
    if [ -f "/boot/vmlinuz-$r" ] && [ -f "/lib/modules/$r/modules.dep" ]; then echo "$r"; return; fi
  done
  echo "build-guest: no kernel with /boot/vmlinuz-VER and /lib/modules/VER/modules.dep" >&2
  exit 1
}

# Prints the module paths (relative to /lib/modules/KVER) in load order:
# dependencies first, each once.
declare -A SEEN=()
ORDER=()
add_module() { # relative path of a .ko
  local rel=$1 deps d
  [ -n "${SEEN[$rel]:-}" ] && return 0
  SEEN[$rel]=1
  deps=$(awk -v m="$rel:" '$1 == m { $1 = ""; print; exit }' "$MODDIR/modules.dep")
  for d in $deps; do add_module "$d"; done
  ORDER+=("$rel")
}

ensure_packages
KVER=$(pick_kernel)
MODDIR=/lib/modules/$KVER
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || { echo "build-guest: $BUSYBOX missing" >&2; exit 1; }
file_of() { # module name -> relative path
  local rel
  rel=$(awk -v n="/$1.ko" 'index($1, n ":") { sub(":$", "", $1); print $1; exit }' "$MODDIR/modules.dep")
  if [ -z "$rel" ]; then
    # built into the kernel: nothing to load
    grep -q "/$1.ko$" "$MODDIR/modules.builtin" 2>/dev/null && return 0
    echo "build-guest: module $1 not found for $KVER" >&2
    exit 1
  fi
  echo "$rel"
}
for m in "${MODULES[@]}"; do
  rel=$(file_of "$m")
  [ -n "$rel" ] && add_module "$rel"
done
for rel in "${ORDER[@]}"; do
  case "$rel" in *.ko) ;; *) echo "build-guest: compressed module $rel is not supported by busybox insmod here" >&2; exit 1 ;; esac
done

# Cache key: everything that goes into the outputs.
KEY=$( {
  for f in "$HERE/build-guest.sh" "$HERE/init.sh" "/boot/vmlinuz-$KVER" "$BUSYBOX"; do sha256sum <"$f"; done
  echo "$KVER ${ORDER[*]}"
  for rel in "${ORDER[@]}"; do sha256sum <"$MODDIR/$rel"; done
} | sha256sum | cut -c1-16)

print_paths() { # cached?
  echo "vmlinuz=$OUTDIR/vmlinuz"
  [ -f "$OUTDIR/vmlinux" ] && echo "vmlinux=$OUTDIR/vmlinux"
  echo "initrd=$OUTDIR/initrd.img"
  echo "kver=$KVER"
  echo "cached=$1"
}

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
exec 9>"$OUTDIR/.lock"
flock 9
if [ -f "$OUTDIR/guest.env" ] && grep -qx "KEY=$KEY" "$OUTDIR/guest.env" && [ -f "$OUTDIR/vmlinuz" ] && [ -f "$OUTDIR/initrd.img" ]; then
  print_paths 1
  exit 0
fi

# Uncompressed kernel for PVH boot (like the kernel's scripts/extract-vmlinux).
extract_vmlinux() { # vmlinuz out
  local magic tool pos
  grep -q '^CONFIG_PVH=y' "/boot/config-$KVER" 2>/dev/null || return 1
  for magic in $'\xfd7zXZ:xz' $'\x1f\x8b\x08:gzip' $'\x28\xb5\x2f\xfd:zstd'; do
    tool=${magic##*:}
    command -v "$tool" >/dev/null || continue
    for pos in $(LC_ALL=C grep -obUa "${magic%:*}" "$1" | cut -d: -f1); do
      tail -c +$((pos + 1)) "$1" | "$tool" -dc >"$2" 2>/dev/null || true
      [ "$(head -c 4 "$2" | od -An -c | tr -d ' ')" = '177ELF' ] && return 0
    done
  done
  rm -f "$2"
  return 1
}

STAGE=$(mktemp -d "$OUTDIR/.stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
ROOT=$STAGE/root
mkdir -p "$ROOT"/{bin,sbin,dev,proc,sys,tmp,etc,lib/modules}
cp "$BUSYBOX" "$ROOT/bin/busybox"
for a in $("$BUSYBOX" --list); do
  [ "$a" = busybox ] || ln -s busybox "$ROOT/bin/$a"
done
: >"$ROOT/etc/stowage-modules"
for rel in "${ORDER[@]}"; do
  cp "$MODDIR/$rel" "$ROOT/lib/modules/"
  basename "$rel" >>"$ROOT/etc/stowage-modules"
done
install -m 0755 "$HERE/init.sh" "$ROOT/init"
chmod 1777 "$ROOT/tmp"
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --reproducible --quiet -R 0:0) | gzip -9 -n >"$STAGE/initrd.img"
cp "/boot/vmlinuz-$KVER" "$STAGE/vmlinuz"
chmod 0644 "$STAGE/vmlinuz" "$STAGE/initrd.img"
PVH=0
if extract_vmlinux "/boot/vmlinuz-$KVER" "$STAGE/vmlinux"; then PVH=1; chmod 0644 "$STAGE/vmlinux"; fi
printf 'KVER=%s\nKEY=%s\nPVH=%s\nMODULES=%s\n' "$KVER" "$KEY" "$PVH" "$(tr '\n' ' ' <"$ROOT/etc/stowage-modules")" >"$STAGE/guest.env"
mv -f "$STAGE/vmlinuz" "$OUTDIR/vmlinuz"
if [ "$PVH" = 1 ]; then mv -f "$STAGE/vmlinux" "$OUTDIR/vmlinux"; else rm -f "$OUTDIR/vmlinux"; fi
mv -f "$STAGE/initrd.img" "$OUTDIR/initrd.img"
mv -f "$STAGE/guest.env" "$OUTDIR/guest.env"
chmod 0755 "$OUTDIR"
print_paths 0
