#!/bin/sh
# /init of the Stowage test guest (busybox initramfs, see build-guest.sh).
#
# Boots, loads the virtio modules listed in /etc/stowage-modules (in order),
# waits for the disk and runs the WRITER: for n = 1, 2, 3, ... it writes one
# 4096-byte record to block slot (n mod BLOCKS) of the disk and, only after
# that write returned successfully, prints `ACK n` on the console (ttyS0).
#
# Kernel command line parameters (all optional):
#   stowage.count=N    stop after N writes (0 = run forever; default 0)
#   stowage.blocks=N   number of 4 KiB slots used on the disk (default 1024)
#   stowage.disk=DEV   block device (default /dev/vda)
#   stowage.mode=M     direct (O_DIRECT, default) | direct-fsync (O_DIRECT and a
#                      flush per write) | fsync (page cache + flush per write)
#   stowage.delay=US   microseconds to sleep between writes (default 0)
#   stowage.end=E      what to do after `count` writes: idle (default) | poweroff
#   stowage.diskwait=S seconds to wait for the disk to appear, 0 = forever (default 10)
#
# Console protocol (one line each, parsed by test/guest/guest.ts):
#   BOOT <id> blocks=<N> count=<N> disk=<dev> mode=<m>   once per boot
#   ACK <n>                                              after write n returned
#   WERR <n> <message>                                   write n failed (retried)
#   DONE <n>                                             count reached
#   FATAL <message>                                      the writer cannot run
#
# Record format (4096 bytes, ASCII): the header
#   STOWSEQ <n> <slot> <boot id> <blocks> <checksum>
# left-aligned in a 3584-byte space-padded field, then the same header again in
# a 511-byte field (the last 512-byte sector) and "\n". Both copies must match
# (a torn write shows as a mismatch). checksum =
#   (n*1000003 + slot*8191 + 0x<boot id> + blocks) mod 4294967291
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

idle() {
  while :; do sleep 3600; done
}
fatal() {
  echo "FATAL $*"
  idle
}

COUNT=0
BLOCKS=1024
DISK=/dev/vda
MODE=direct
DELAY=0
END=idle
DISKWAIT=10
read -r CMDLINE </proc/cmdline
for p in $CMDLINE; do
  case "$p" in
    stowage.count=*) COUNT=${p#*=} ;;
    stowage.blocks=*) BLOCKS=${p#*=} ;;
    stowage.disk=*) DISK=${p#*=} ;;
    stowage.mode=*) MODE=${p#*=} ;;
    stowage.delay=*) DELAY=${p#*=} ;;
    stowage.end=*) END=${p#*=} ;;
    stowage.diskwait=*) DISKWAIT=${p#*=} ;;
  esac
done
case "$MODE" in
  direct) DDFLAGS="oflag=direct conv=notrunc" ;;
  direct-fsync) DDFLAGS="oflag=direct conv=notrunc,fsync" ;;
  fsync) DDFLAGS="conv=notrunc,fsync" ;;
  *) fatal "unknown stowage.mode=$MODE" ;;
esac

while read -r m; do
  [ -n "$m" ] && { insmod "/lib/modules/$m" || echo "MODFAIL $m"; }
done </etc/stowage-modules

i=0
while [ ! -b "$DISK" ]; do
  i=$((i + 1))
  [ "$DISKWAIT" -gt 0 ] && [ $i -gt $((DISKWAIT * 100)) ] && fatal "no disk $DISK"
  usleep 10000
done

read -r UUID </proc/sys/kernel/random/uuid
BOOT=${UUID%%-*}
BOOTNUM=$((0x$BOOT))
echo "BOOT $BOOT blocks=$BLOCKS count=$COUNT disk=$DISK mode=$MODE"

n=1
while [ "$COUNT" -eq 0 ] || [ $n -le "$COUNT" ]; do
  slot=$((n % BLOCKS))
  cs=$(((n * 1000003 + slot * 8191 + BOOTNUM + BLOCKS) % 4294967291))
  h="STOWSEQ $n $slot $BOOT $BLOCKS $cs"
  printf '%-3584s%-511s\n' "$h" "$h" >/tmp/blk
  # shellcheck disable=SC2086 # DDFLAGS holds several words on purpose
  until dd if=/tmp/blk of="$DISK" bs=4096 seek=$slot count=1 $DDFLAGS status=none 2>/tmp/dderr; do
    read -r err </tmp/dderr
    echo "WERR $n $err"
    usleep 200000
  done
  echo "ACK $n"
  n=$((n + 1))
  [ "$DELAY" -gt 0 ] && usleep "$DELAY"
done
echo "DONE $((n - 1))"
[ "$END" = poweroff ] && poweroff -f
idle
