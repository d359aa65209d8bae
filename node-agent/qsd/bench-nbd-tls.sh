#!/usr/bin/env bash
# What TLS costs on the NBD path: nbdcopy (libnbd; fio's nbd engine cannot load
# TLS keys) against qemu-storage-daemon raw exports over a unix socket, loopback
# TCP, TCP with TLS in QSD (tls-creds-psk), and TLS terminated by an nbdkit
# forwarder in front of the unix export. 16 requests in flight, one connection.
# Prints IOPS per round and the median per-round ratio to unix. A benchmark
# script, not a test.
#
#   bash node-agent/qsd/bench-nbd-tls.sh
#   ROUNDS=7 SIZE=1G bash node-agent/qsd/bench-nbd-tls.sh
set -euo pipefail

ROUNDS=${ROUNDS:-5}
SIZE=${SIZE:-512M}
PORT=${PORT:-10950}
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/qsd-tls-XXXXXX")
cleanup() {
  for f in "$W"/*.pid; do [[ -s $f ]] && kill "$(cat "$f")" 2>/dev/null || true; done
  sleep 0.5
  rm -rf "$W"
}
trap cleanup EXIT

psktool -u stowage -p "$W/keys.psk" >/dev/null 2>&1
head -c "$SIZE" /dev/urandom >"$W/src" # incompressible, never zero: nbdcopy skips zero blocks
for t in unix tcp tls; do
  mkdir "$W/$t"
  qemu-img create -q -f raw -o preallocation=full "$W/$t/img" "$SIZE"
done
export_of() {
  echo "--blockdev file,node-name=f,filename=$W/$1/img,aio=native,cache.direct=on --blockdev raw,node-name=d,file=f
        --export nbd,id=e,node-name=d,name=e,writable=on --pidfile $W/$1.pid --daemonize"
}
# shellcheck disable=SC2046
qemu-storage-daemon --nbd-server "addr.type=unix,addr.path=$W/unix/sock" $(export_of unix)
# shellcheck disable=SC2046
qemu-storage-daemon --nbd-server "addr.type=inet,addr.host=127.0.0.1,addr.port=$PORT" $(export_of tcp)
# shellcheck disable=SC2046
qemu-storage-daemon --object "tls-creds-psk,id=tls0,endpoint=server,dir=$W" \
  --nbd-server "addr.type=inet,addr.host=127.0.0.1,addr.port=$((PORT + 1)),tls-creds=tls0" $(export_of tls)
nbdkit -P "$W/nbdkit.pid" --tls=require --tls-psk="$W/keys.psk" -i 127.0.0.1 -p $((PORT + 2)) nbd socket="$W/unix/sock" export=e
for _ in $(seq 100); do [[ -s "$W/nbdkit.pid" ]] && break; sleep 0.05; done

T="unix tcp tls fwdtls"
declare -A uri=(
  [unix]="nbd+unix:///e?socket=$W/unix/sock"
  [tcp]="nbd://127.0.0.1:$PORT/e"
  [tls]="nbds://stowage@127.0.0.1:$((PORT + 1))/e?tls-psk-file=$W/keys.psk"
  [fwdtls]="nbds://stowage@127.0.0.1:$((PORT + 2))/e?tls-psk-file=$W/keys.psk"
)
bytes=$(stat -c %s "$W/src")
declare -A res
for ((r = 1; r <= ROUNDS; r++)); do
  for bs in 4096 1048576; do
    for dir in read write; do
      for t in $T; do
        if [[ $dir == read ]]; then args=("${uri[$t]}" null:); else args=("$W/src" "${uri[$t]}"); fi
        start=$(date +%s.%N)
        nbdcopy --request-size=$bs --requests=16 --connections=1 --threads=1 "${args[@]}"
        res["$t $bs $dir"]+="$(awk -v s="$start" -v e="$(date +%s.%N)" -v bs=$bs -v n="$bytes" 'BEGIN { printf "%d", n / bs / (e - s) }') "
      done
    done
  done
  echo "round $r of $ROUNDS done" >&2
done

median_ratio() { # "a1 a2 ..." "b1 b2 ..."
  paste <(tr ' ' '\n' <<<"$1") <(tr ' ' '\n' <<<"$2") | awk 'NF == 2 { printf "%.2f\n", $1 / $2 }' | sort -g |
    awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}
printf '%-7s %-8s %-6s %-8s %s\n' transport request dir "vs unix" "IOPS per round"
for bs in 4096 1048576; do
  for dir in read write; do
    for t in $T; do
      printf '%-7s %-8s %-6s %-8s %s\n' "$t" "$bs" "$dir" "$(median_ratio "${res["$t $bs $dir"]}" "${res["unix $bs $dir"]}")" "${res["$t $bs $dir"]}"
    done
  done
done
