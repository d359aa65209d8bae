#!/usr/bin/env bash
# Runs one libvirtd that plays a separate KVM host on this machine (local
# cluster and tests). libvirt refuses to migrate a domain to the daemon it runs
# on, so each "host" is its own `libvirtd --listen` in a private mount
# namespace with its own /etc/libvirt, /run/libvirt, /var/lib/libvirt,
# /var/cache/libvirt, /var/log/libvirt and /run/stowage bind-mounted from DIR.
# A node agent started in the same namespace (nsenter --mount=/proc/PID/ns/mnt)
# sees that host's /run/stowage, so volume sockets have the same path on every
# host and are still different sockets, as on real machines.
#
#   deploy/libvirt-host.sh DIR LISTEN_ADDR PORT MIGRATION_PORT_MIN
#
# Writes DIR/etc/libvirtd.conf and qemu.conf, then runs libvirtd in the
# foreground under a small reaper (the pid stays this script's: signals go on to
# the daemon, it exits with the daemon; the daemon's own pid file is DIR/libvirtd.pid).
# qemu+tcp://LISTEN_ADDR:PORT/system reaches it (no auth: local use only);
# incoming migrations use MIGRATION_PORT_MIN..+15. Probed QEMU capabilities are
# shared through $STOWAGE_LIBVIRT_CAPS_CACHE (default /var/tmp/stowage-libvirt-caps):
# the first start probes for 8-15 s, later ones take about 0.5 s.
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: $0 DIR LISTEN_ADDR PORT MIGRATION_PORT_MIN" >&2; exit 2; }
DIR=$1 ADDR=$2 PORT=$3 MIG=$4
CAPS=${STOWAGE_LIBVIRT_CAPS_CACHE:-/var/tmp/stowage-libvirt-caps}
declare -A BIND=([etc]=/etc/libvirt [run]=/run/libvirt [lib]=/var/lib/libvirt [cache]=/var/cache/libvirt [log]=/var/log/libvirt [run-stowage]=/run/stowage)

for d in "${!BIND[@]}"; do mkdir -p "$DIR/$d"; done
# QEMU runs as libvirt-qemu and keeps its per-domain state here.
mkdir -p "$DIR/lib/qemu" "$DIR/cache/qemu/capabilities"
chown "$(stat -c %u:%g /var/lib/libvirt/qemu 2>/dev/null || echo libvirt-qemu:kvm)" "$DIR/lib/qemu" 2>/dev/null || chown libvirt-qemu "$DIR/lib/qemu" || true
chmod 0750 "$DIR/lib/qemu"
chmod 0755 "$DIR/run-stowage"
[ -f "$DIR/etc/host-uuid" ] || cat /proc/sys/kernel/random/uuid >"$DIR/etc/host-uuid"

cat >"$DIR/etc/libvirtd.conf" <<CONF
listen_tls = 0
listen_tcp = 1
listen_addr = "$ADDR"
tcp_port = "$PORT"
auth_tcp = "none"
host_uuid = "$(cat "$DIR/etc/host-uuid")"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
CONF
# dynamic_ownership = 0: libvirt does not chown the kernel, initrd and serial
# logs the "hosts" share (two daemons would fight over them).
cat >"$DIR/etc/qemu.conf" <<CONF
migration_port_min = $MIG
migration_port_max = $((MIG + 15))
cgroup_controllers = [ ]
stdio_handler = "file"
dynamic_ownership = 0
remember_owner = 0
CONF
if [ -d "$CAPS" ]; then cp -f "$CAPS"/*.xml "$DIR/cache/qemu/capabilities/" 2>/dev/null || true; fi

# libvirt daemonizes QEMU, so a QEMU's parent is the nearest subreaper, else pid
# 1. Stopping a domain (the source side of every migration) waits until
# kill(pid, 0) fails, and a zombie still passes: under an init that reaps
# orphans only now and then (some container inits: every 2 s) each stop took
# 0.2-2 s longer. So QEMUs are reparented to this reaper, which collects them at
# once, as systemd does on a real host. It is the script's pid (same mount
# namespace as the daemon), passes TERM/INT/HUP/QUIT/USR1/USR2 on, and exits
# with libvirtd; libvirtd is SIGKILLed if the reaper dies first (killed too).
REAPER='
  my $nr = shift @ARGV;
  syscall($nr, 36, 1, 0, 0, 0) == 0 or die "prctl(PR_SET_CHILD_SUBREAPER): $!\n";
  my $daemon = fork() // die "fork: $!\n";
  if (!$daemon) {
    syscall($nr, 1, 9, 0, 0, 0);
    exec { $ARGV[0] } @ARGV or die "exec $ARGV[0]: $!\n";
  }
  $SIG{$_} = sub { kill $_[0], $daemon } for qw(TERM INT HUP QUIT USR1 USR2);
  for (;;) {
    my $pid = waitpid(-1, 0);
    exit($? & 127 ? 128 + ($? & 127) : $? >> 8) if $pid == $daemon;
    exit 1 if $pid < 0;
  }'
case "$(uname -m)" in # prctl's syscall number
  x86_64) PRCTL=157 ;;
  aarch64) PRCTL=167 ;;
  *) PRCTL= ;;
esac
run="exec libvirtd --listen -p '$DIR/libvirtd.pid'"
[ -n "$PRCTL" ] && command -v perl >/dev/null && run="exec perl -e \"\$REAPER\" $PRCTL libvirtd --listen -p '$DIR/libvirtd.pid'"

mounts=""
for d in "${!BIND[@]}"; do mounts+="mkdir -p ${BIND[$d]} && mount --bind '$DIR/$d' ${BIND[$d]} && "; done
# unshare execs sh, which execs the reaper (or libvirtd): this script's pid stays the host's.
export REAPER
exec unshare -m --propagation private sh -c "${mounts}${run}"
