#!/usr/bin/env bash
# Starts a local Stowage cluster on this machine: one etcd, two controllers
# (leader + standby) and three "hosts" on 127.0.0.11-13, each a libvirtd in its
# own mount namespace (deploy/libvirt-host.sh) plus a node agent in that
# namespace, with its own data directory and pool under .cluster/. VMs started
# on a host's libvirtd can be live-migrated between hosts with stowctl.
# Installs and builds what is missing first. Safe to run again: a running
# cluster is left as it is. STOWAGE_NO_LIBVIRT=1 starts the agents without libvirt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STATE="$ROOT/.cluster"
ETCD_PORT=${STOWAGE_ETCD_PORT:-12379}
CONTROLLERS=("127.0.0.1:7400" "127.0.0.1:7401")
NODES=(node1 node2 node3)
CONFIG_FILE=${STOWAGE_CONFIG:-${XDG_CONFIG_HOME:-$HOME/.config}/stowage/cluster.json}

bash deploy/install-deps.sh

alive() { [ -f "$STATE/pids/$1" ] && kill -0 "$(cat "$STATE/pids/$1")" 2>/dev/null; }

mkdir -p "$STATE/pids" "$STATE/logs"

start() { # name, command...
  local name=$1; shift
  if alive "$name"; then return; fi
  setsid nohup "$@" >"$STATE/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$STATE/pids/$name"
}

wait_for() { # description, seconds, command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "error: $what did not come up in ${secs}s; see $STATE/logs/" >&2
  exit 1
}

echo "==> starting etcd on 127.0.0.1:$ETCD_PORT"
start etcd etcd --name stowage --data-dir "$STATE/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
  --initial-cluster "stowage=http://127.0.0.1:$((ETCD_PORT + 1))" \
  --heartbeat-interval 20 --election-timeout 200 --logger zap --log-outputs stderr
wait_for etcd 20 etcdctl --endpoints "127.0.0.1:$ETCD_PORT" endpoint health

for i in "${!CONTROLLERS[@]}"; do
  addr=${CONTROLLERS[$i]}
  echo "==> starting controller $((i + 1)) on $addr (metrics: http://127.0.0.1:$((9400 + i))/metrics)"
  start "controller$((i + 1))" node dist/controller/main.js --listen "$addr" --etcd "http://127.0.0.1:$ETCD_PORT" --leader-ttl 1 \
    --metrics-port "$((9400 + i))"
done

controllers=$(IFS=,; echo "${CONTROLLERS[*]}")
zones=(zone-a zone-b zone-c)
LIBVIRT_PORT=16510

libvirt_ready() { virsh -c "qemu+tcp://$1:$LIBVIRT_PORT/system" version 2>/dev/null | grep -q "Running hypervisor: QEMU"; }
if [ -z "${STOWAGE_NO_LIBVIRT:-}" ]; then
  for i in "${!NODES[@]}"; do
    n=${NODES[$i]}
    ip="127.0.0.$((11 + i))"
    echo "==> starting libvirtd of $n on qemu+tcp://$ip:$LIBVIRT_PORT/system"
    start "libvirtd-$n" bash deploy/libvirt-host.sh "$STATE/$n/libvirt" "$ip" "$LIBVIRT_PORT" "$((49200 + i * 16))"
  done
  for i in "${!NODES[@]}"; do
    # The first start probes QEMU's capabilities (8-15 s); later starts reuse them.
    wait_for "libvirtd of ${NODES[$i]}" 120 libvirt_ready "127.0.0.$((11 + i))"
  done
  mkdir -p /var/tmp/stowage-libvirt-caps
  cp -f "$STATE"/node1/libvirt/cache/qemu/capabilities/*.xml /var/tmp/stowage-libvirt-caps/ 2>/dev/null || true
fi

for i in "${!NODES[@]}"; do
  n=${NODES[$i]}
  ip="127.0.0.$((11 + i))"
  mkdir -p "$STATE/$n/pools/default"
  if [ -z "${STOWAGE_NO_LIBVIRT:-}" ]; then
    # Frontend sockets at /run/stowage/volumes: the same path on every host, inside each host's namespace.
    frontend_dir=/run/stowage/volumes
    libvirt="{ \"uri\": \"qemu+tcp://$ip:$LIBVIRT_PORT/system\", \"peerUri\": \"qemu+tcp://$ip:$LIBVIRT_PORT/system\", \"migrationHost\": \"$ip\" }"
    ns=(nsenter "--mount=/proc/$(cat "$STATE/pids/libvirtd-$n")/ns/mnt" --)
  else
    frontend_dir="$STATE/$n/run"
    libvirt=false
    ns=()
  fi
  cat >"$STATE/$n/agent.json" <<JSON
{
  "name": "$n",
  "listen": "$ip:7500",
  "controllers": ["${CONTROLLERS[0]}", "${CONTROLLERS[1]}"],
  "labels": { "zone": "${zones[$i]}", "rack": "rack-1" },
  "dataDir": "$STATE/$n",
  "pools": [{ "name": "default", "type": "dir", "path": "$STATE/$n/pools/default", "overcommitRatio": 4 }],
  "frontendDir": "$frontend_dir",
  "nbd": { "type": "tcp", "host": "$ip", "port": 10809 },
  "libvirt": $libvirt
}
JSON
  echo "==> starting agent $n on $ip:7500"
  start "agent-$n" "${ns[@]}" node "$ROOT/dist/node-agent/main.js" --config "$STATE/$n/agent.json"
done

mkdir -p "$(dirname "$CONFIG_FILE")"
printf '{"controllers":["%s","%s"]}\n' "${CONTROLLERS[0]}" "${CONTROLLERS[1]}" >"$CONFIG_FILE"

all_online() {
  local n
  n=$(node bin/stowctl.js --controller "$controllers" node list -o json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const j=JSON.parse(s);const a=(j.nodes??j);console.log(a.filter(x=>x.online).length)})')
  [ "$n" -ge "${#NODES[@]}" ]
}
wait_for "the three agents" 30 all_online

cat <<MSG

Stowage is up: etcd, 2 controllers (${CONTROLLERS[*]}), 3 hosts node1-3 (127.0.0.11-13),
each with a node agent and a libvirtd (qemu+tcp://127.0.0.1X:$LIBVIRT_PORT/system).
stowctl finds the controllers through $CONFIG_FILE.

  npx stowctl node list
  npx stowctl volume create vol1 --size 10GiB --replicas 2
  npx stowctl volume get vol1
  npx stowctl volume attach vol1 --node node1      # prints an nbd+unix:// URI for qemu-img, qemu-io, fio, QEMU
  npx stowctl volume create vol2 --size 200GiB --replicas 3 --dry-run
  npx stowctl --help

A VM to live-migrate (a small guest that writes numbered records to its disk):
  bash deploy/demo-vm.sh start demo1 --node node1  # boots it on node1 (no disk yet)
  npx stowctl volume create demo1-disk --size 256MiB --replicas 2
  npx stowctl vm attach demo1 demo1-disk           # hot-plugs the volume; the guest starts writing
  npx stowctl vm migrate demo1 --to node2          # live, no disk copy
  bash deploy/demo-vm.sh log demo1                 # the guest's console: ACK n for each durable write

Logs: $STATE/logs/   Stop everything: npm run cluster:down
MSG
