#!/usr/bin/env bash
# Starts a local Stowage cluster on this machine: one etcd, two controllers
# (leader + standby) and three node agents on 127.0.0.11-13, each with its own
# data directory and pool under .cluster/. Installs and builds what is missing
# first. Safe to run again: a running cluster is left as it is.
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
  echo "==> starting controller $((i + 1)) on $addr"
  start "controller$((i + 1))" node dist/controller/main.js --listen "$addr" --etcd "http://127.0.0.1:$ETCD_PORT" --leader-ttl 1
done

controllers=$(IFS=,; echo "${CONTROLLERS[*]}")
zones=(zone-a zone-b zone-c)
for i in "${!NODES[@]}"; do
  n=${NODES[$i]}
  ip="127.0.0.$((11 + i))"
  mkdir -p "$STATE/$n/pools/default"
  cat >"$STATE/$n/agent.json" <<JSON
{
  "name": "$n",
  "listen": "$ip:7500",
  "controllers": ["${CONTROLLERS[0]}", "${CONTROLLERS[1]}"],
  "labels": { "zone": "${zones[$i]}", "rack": "rack-1" },
  "dataDir": "$STATE/$n",
  "pools": [{ "name": "default", "type": "dir", "path": "$STATE/$n/pools/default", "overcommitRatio": 4 }],
  "frontendDir": "$STATE/$n/run",
  "nbd": { "type": "tcp", "host": "$ip", "port": 10809 }
}
JSON
  echo "==> starting agent $n on $ip:7500"
  start "agent-$n" node dist/node-agent/main.js --config "$STATE/$n/agent.json"
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

Stowage is up: etcd, 2 controllers (${CONTROLLERS[*]}), 3 agents (127.0.0.11-13).
stowctl finds the controllers through $CONFIG_FILE.

  npx stowctl node list
  npx stowctl volume create vol1 --size 10GiB --replicas 2
  npx stowctl volume get vol1
  npx stowctl volume attach vol1 --node node1      # prints an nbd+unix:// URI for qemu-img, qemu-io, fio, QEMU
  npx stowctl volume create vol2 --size 200GiB --replicas 3 --dry-run
  npx stowctl --help

Logs: $STATE/logs/   Stop everything: npm run cluster:down
MSG
