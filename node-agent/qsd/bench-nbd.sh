#!/usr/bin/env bash
# Measures a qemu-storage-daemon raw export over each NBD transport (unix socket,
# loopback TCP, or a unix export behind an nbdkit TCP forwarder) and each file
# backend (aio mode, cache.direct), with fio's nbd engine. It is a benchmark
# script, not a test.
#
# The machine is shared and noisy, so every transport of one backend runs at the
# same time (one daemon and image each) and fio alternates between them run by
# run; each line shows the median and range of IOPS and the median of the
# per-round ratio to the first transport (and, for backends, to the first backend).
#
#   bash node-agent/qsd/bench-nbd.sh
#   ROUNDS=9 RUNTIME=3 TRANSPORTS="unix tcp" BACKENDS="native:on threads:on" bash node-agent/qsd/bench-nbd.sh
set -euo pipefail

ROUNDS=${ROUNDS:-5}
RUNTIME=${RUNTIME:-3}
SIZE=${SIZE:-1G}
DIR=${BENCH_DIR:-/var/tmp}
TRANSPORTS=${TRANSPORTS:-"unix tcp"}        # unix | tcp | fwd
BACKENDS=${BACKENDS:-"native:on"}           # aio:cache.direct
WORKLOADS=${WORKLOADS:-"randread:4k:16 randwrite:4k:16 read:1M:8 write:1M:8"} # rw:bs:iodepth
PORT=${PORT:-10899}

work=$(mktemp -d "$DIR/qsd-bench-XXXXXX")
pids=()
stop_all() {
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
    while kill -0 "$p" 2>/dev/null; do sleep 0.05; done
  done
  pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT

declare -A port uri
i=0
for t in $TRANSPORTS; do
  mkdir "$work/$t"
  # Fully allocated, so randwrite measures I/O and not block allocation in the host filesystem.
  qemu-img create -q -f raw -o preallocation=full "$work/$t/bench.raw" "$SIZE"
  port[$t]=$((PORT + i))
  i=$((i + 1))
  if [[ $t == unix ]]; then uri[$t]="nbd+unix:///bench?socket=$work/$t/nbd.sock"; else uri[$t]="nbd://127.0.0.1:${port[$t]}/bench"; fi
done

start() { # transport aio direct
  local t=$1 server="addr.type=unix,addr.path=$work/$1/nbd.sock"
  [[ $t == tcp ]] && server="addr.type=inet,addr.host=127.0.0.1,addr.port=${port[$t]}"
  rm -f "$work/$t/"*.pid "$work/$t/nbd.sock"
  qemu-storage-daemon \
    --blockdev "file,node-name=file0,filename=$work/$t/bench.raw,aio=$2,cache.direct=$3" \
    --blockdev raw,node-name=fmt0,file=file0 \
    --nbd-server "$server" \
    --export nbd,id=bench,node-name=fmt0,name=bench,writable=on \
    --pidfile "$work/$t/qsd.pid" --daemonize
  pids+=("$(cat "$work/$t/qsd.pid")")
  if [[ $t == fwd ]]; then
    nbdkit -P "$work/$t/nbdkit.pid" -i 127.0.0.1 -p "${port[$t]}" nbd socket="$work/$t/nbd.sock" export=bench
    # nbdkit's forked child writes the pidfile after the parent has returned.
    for _ in $(seq 100); do [[ -s "$work/$t/nbdkit.pid" ]] && break; sleep 0.05; done
    pids+=("$(cat "$work/$t/nbdkit.pid")")
  fi
}

# One fio run (the nbd engine prints a line before the JSON); prints IOPS.
run_fio() { # uri rw bs iodepth
  fio --name=bench --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" --numjobs=1 \
    --size="$SIZE" --runtime="$RUNTIME" --time_based --ramp_time=1 --output-format=json 2>/dev/null |
    sed -n '/^{/,$p' | jq -r '.jobs[0] | (if .read.io_bytes > 0 then .read else .write end) | .iops | floor'
}

declare -A iops
for ((round = 1; round <= ROUNDS; round++)); do
  for backend in $BACKENDS; do
    for t in $TRANSPORTS; do start "$t" "${backend%%:*}" "${backend##*:}"; done
    for workload in $WORKLOADS; do
      IFS=: read -r rw bs depth <<<"$workload"
      for t in $TRANSPORTS; do iops["$t $backend $workload $round"]=$(run_fio "${uri[$t]}" "$rw" "$bs" "$depth"); done
    done
    stop_all
  done
  echo "round $round of $ROUNDS done" >&2
done

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ratios() { # key-of-this key-of-reference
  for ((r = 1; r <= ROUNDS; r++)); do echo "${iops["$1 $r"]} ${iops["$2 $r"]}" | awk '{ printf "%.3f\n", $1 / $2 }'; done | median
}

first_t=${TRANSPORTS%% *}
first_b=${BACKENDS%% *}
printf '%-6s %-20s %-16s %-24s %-12s %s\n' transport backend workload "IOPS median (min-max)" "vs $first_t" "vs $first_b"
for backend in $BACKENDS; do
  for workload in $WORKLOADS; do
    for t in $TRANSPORTS; do
      vals=$(for ((r = 1; r <= ROUNDS; r++)); do echo "${iops["$t $backend $workload $r"]}"; done | sort -g)
      printf '%-6s %-20s %-16s %-24s %-12s %s\n' "$t" "aio=${backend%%:*},direct=${backend##*:}" "$workload" \
        "$(median <<<"$vals") ($(head -1 <<<"$vals")-$(tail -1 <<<"$vals"))" \
        "$(ratios "$t $backend $workload" "$first_t $backend $workload")" \
        "$(ratios "$t $backend $workload" "$t $first_b $workload")"
    done
  done
done
