#!/usr/bin/env bash
# Three sequencer nodes on one PostgreSQL database and one Redis bus, with nginx in front
# (docs/nginx.conf: the room id hashed to a node). See docs/scale-out.md.
#
#   scripts/three-nodes.sh            # build, create database `sequencer`, start nodes on
#                                     # 2001-2003 and nginx on 8080, wait for Ctrl-C
#   PG=postgres://me@db:5432 REDIS=redis://cache:6379 scripts/three-nodes.sh
#
#   scripts/three-nodes.sh --check    # (or CHECK=1) the CI check, non-interactive, < 1 min:
#     its own database and Redis key prefix, three nodes and nginx on free ports; then
#     1. client-sim through nginx only (clients know nginx's address), one node SIGKILLed
#        mid-run; 2. the killed node restarted, client-sim given the three node URLs, another
#        node SIGKILLed mid-run. Each run must end CONVERGED: every client live again on
#        another node, all equal to the server, no acknowledged op lost. Prints the failover
#        time (kill -> every client connected again, from the surviving nodes' connection
#        gauges; and the longest client outage the simulator saw). Cleans up on every exit.
#
# Needs PostgreSQL (trust auth), Redis and nginx (Debian's; installed when missing and run
# unprivileged with every path under a temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."

check=${CHECK:-0}
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac
[ "$check" = 0 ] || check=1

PG=${PG:-postgres://postgres@127.0.0.1:5432}
REDIS=${REDIS:-redis://127.0.0.1:6379}
SECRET=${SEQUENCER_SECRET:-three-nodes-dev-secret}
ROOT=$PWD

log() { echo "three-nodes: $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# ---- ports, processes, cleanup ---------------------------------------------------------------

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A port nothing listens on now (bounded tries), below Linux's ephemeral range (32768-60999), so
# no outgoing connection takes a killed node's port before it is restarted. Another process may
# still take it before the node binds; the node then fails to start and the wait below says so.
free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 12000))
    if ! port_in_use "$p" && ! [[ " ${used_ports[*]:-} " == *" $p "* ]]; then
      used_ports+=("$p")
      echo "$p"
      return 0
    fi
  done
  die "no free port found"
}

declare -A node_pid=()
nginx_pid=""
sim_pid=""
tmp=$(mktemp -d "${TMPDIR:-/tmp}/three-nodes.XXXXXX")
used_ports=()

cleanup() {
  local rc=$?
  set +e
  [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null
  for p in "${node_pid[@]}"; do kill "$p" 2>/dev/null; done
  [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null
  wait 2>/dev/null
  if [ "$check" = 1 ]; then
    psql "$PG/postgres" -qAtc "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 \
      || log "could not drop database $DB"
    if command -v redis-cli >/dev/null 2>&1; then
      redis-cli -u "$REDIS" --scan --pattern "${PREFIX}*" 2>/dev/null | head -100000 \
        | xargs -r -n 500 redis-cli -u "$REDIS" del >/dev/null 2>&1
    fi
    if [ "$rc" != 0 ]; then
      for f in "$tmp"/*.log; do [ -f "$f" ] && { log "--- tail of $f"; tail -n 20 "$f" >&2; }; done
    fi
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$check" = 1 ]; then
  id="$(date +%s)_$$_$RANDOM"
  DB=${DB:-three_nodes_check_$id}
  PREFIX="three-nodes-check:$id:"
  read -r -a PORTS <<<"$(free_port) $(free_port) $(free_port)"
  NGINX_PORT=$(free_port)
else
  DB=${DB:-sequencer}
  PREFIX=${BUS_PREFIX:-three-nodes:}
  read -r -a PORTS <<<"${PORTS:-2001 2002 2003}"
  NGINX_PORT=${NGINX_PORT:-8080}
fi

# ---- build, services, nginx -----------------------------------------------------------------

cargo build --release -p sequencer -p client-sim
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
BIN="$target_dir/release/sequencer"
SIM="$target_dir/release/client-sim"

# Debian's packages for what is missing: nginx, and curl and jq for the check.
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
missing=()
[ -x "$NGINX" ] || missing+=(nginx)
command -v curl >/dev/null 2>&1 || missing+=(curl)
[ "$check" = 0 ] || command -v jq >/dev/null 2>&1 || missing+=(jq)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian's ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
      || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
  else
    sudo apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
  fi
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
fi

# The database must exist; the schema is created by the first node that starts.
psql "$PG/postgres" -Atc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 \
  || psql "$PG/postgres" -qc "CREATE DATABASE \"$DB\""

start_node() { # index
  local i=$1 port=${PORTS[$1]}
  "$BIN" serve --listen "127.0.0.1:$port" --secret "$SECRET" \
    --store "$PG/$DB" --bus "$REDIS" --bus-prefix "$PREFIX" >>"$tmp/node$i.log" 2>&1 &
  node_pid[$i]=$!
}

# GET /healthz answers 200 within 10 s (bounded).
wait_http() { # port what
  for _ in $(seq 1 100); do
    if curl -fsS -m 1 "http://127.0.0.1:$1/healthz" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "$2 on port $1 did not answer /healthz within 10 s"
}

# docs/nginx.conf with this run's ports, and every file nginx writes under $tmp.
make_nginx_conf() {
  sed -e "s#^pid .*#pid $tmp/nginx.pid;#" \
    -e "s#listen 127.0.0.1:8080;#listen 127.0.0.1:$NGINX_PORT;#" \
    -e "s#server 127.0.0.1:2001 #server 127.0.0.1:${PORTS[0]} #" \
    -e "s#server 127.0.0.1:2002 #server 127.0.0.1:${PORTS[1]} #" \
    -e "s#server 127.0.0.1:2003 #server 127.0.0.1:${PORTS[2]} #" \
    -e "s#^worker_processes .*#worker_processes 1;#" \
    -e "s#^http {#error_log $tmp/nginx-error.log warn;\nhttp {\n    client_body_temp_path $tmp/client_body;\n    proxy_temp_path $tmp/proxy;\n    fastcgi_temp_path $tmp/fastcgi;\n    uwsgi_temp_path $tmp/uwsgi;\n    scgi_temp_path $tmp/scgi;#" \
    docs/nginx.conf >"$tmp/nginx.conf"
  grep -q "listen 127.0.0.1:$NGINX_PORT;" "$tmp/nginx.conf" && grep -q "127.0.0.1:${PORTS[2]} " "$tmp/nginx.conf" \
    || die "docs/nginx.conf no longer has the lines this script substitutes (listen 8080, servers 2001-2003)"
}

start_nginx() {
  make_nginx_conf
  "$NGINX" -p "$tmp" -e "$tmp/nginx-error.log" -c "$tmp/nginx.conf" -t >"$tmp/nginx-t.log" 2>&1 \
    || { cat "$tmp/nginx-t.log" >&2; die "nginx -t refused the generated config"; }
  "$NGINX" -p "$tmp" -e "$tmp/nginx-error.log" -c "$tmp/nginx.conf" -g "daemon off;" >>"$tmp/nginx.log" 2>&1 &
  nginx_pid=$!
}

for i in 0 1 2; do start_node "$i"; done
for i in 0 1 2; do wait_http "${PORTS[$i]}" "node $i"; done
start_nginx
wait_http "$NGINX_PORT" "nginx"

if [ "$check" = 0 ]; then
  echo
  echo "three nodes up on ports ${PORTS[*]} (store $PG/$DB, bus $REDIS, prefix $PREFIX)"
  echo "nginx (docs/nginx.conf, room id hashed to a node) on ws://127.0.0.1:$NGINX_PORT"
  echo "a room token for room demo:"
  echo "  $("$BIN" token --secret "$SECRET" --room demo --sub alice --name Alice)"
  echo "simulate 10 rooms × 5 clients through nginx (or give the node URLs: clients fail over):"
  echo "  $SIM --secret $SECRET --url ws://127.0.0.1:$NGINX_PORT"
  echo "  $SIM --secret $SECRET --url ws://127.0.0.1:${PORTS[0]},ws://127.0.0.1:${PORTS[1]},ws://127.0.0.1:${PORTS[2]}"
  echo "Ctrl-C stops everything."
  wait
  exit 0
fi

# ---- the check ------------------------------------------------------------------------------

now_ms() { date +%s%3N; }

connections() { # port -> the node's open WebSocket connections (0 if it does not answer)
  curl -fsS -m 1 "http://127.0.0.1:$1/metrics" 2>/dev/null \
    | sed -n 's/^sequencer_connections \([0-9]*\)$/\1/p' | head -1 | grep . || echo 0
}

ROOMS=${CHECK_ROOMS:-6}
CLIENTS=${CHECK_CLIENTS:-4}
TOTAL=$((ROOMS * CLIENTS))

# One run: client-sim with --url $2, the node chosen by $3 SIGKILLed after $KILL_AFTER s.
# $3 = busiest: the node with the most connections then; or a node index.
run_with_kill() { # name urls victim
  local name=$1 urls=$2 victim=$3 seed=$((RANDOM * 32768 + RANDOM))
  log "run '$name': $ROOMS rooms × $CLIENTS clients, --url $urls, seed $seed"
  timeout 120 "$SIM" --secret "$SECRET" --url "$urls" --rooms "$ROOMS" --clients "$CLIENTS" \
    --ops 1000000 --rate 10 --duration 10 --cursor-hz 2 --seed "$seed" --json --quiet \
    >"$tmp/$name.json" 2>"$tmp/$name.log" &
  sim_pid=$!
  # Every client connected first (bounded), then a little editing.
  local sum=0 waited=0
  while [ "$waited" -lt 100 ]; do
    sum=0
    for i in 0 1 2; do [ -n "${node_pid[$i]:-}" ] && sum=$((sum + $(connections "${PORTS[$i]}"))); done
    [ "$sum" -ge "$TOTAL" ] && break
    sleep 0.1
    waited=$((waited + 1))
  done
  [ "$sum" -ge "$TOTAL" ] || die "$name: only $sum of $TOTAL clients connected within 10 s"
  sleep 3
  if [ "$victim" = busiest ]; then
    local best=-1 c
    for i in 0 1 2; do
      c=$(connections "${PORTS[$i]}")
      if [ "$c" -gt "$best" ]; then best=$c; victim=$i; fi
    done
  fi
  local before
  before=$(connections "${PORTS[$victim]}")
  [ "$before" -gt 0 ] || die "$name: node $victim has no clients to fail over"
  local t0
  t0=$(now_ms)
  kill -9 "${node_pid[$victim]}"
  wait "${node_pid[$victim]}" 2>/dev/null || true
  unset "node_pid[$victim]"
  killed=$victim
  # Kill -> every client connected again to a surviving node (bounded: 30 s).
  local t1=""
  for _ in $(seq 1 600); do
    sum=0
    for i in "${!node_pid[@]}"; do sum=$((sum + $(connections "${PORTS[$i]}"))); done
    if [ "$sum" -ge "$TOTAL" ]; then t1=$(now_ms); break; fi
    sleep 0.05
  done
  [ -n "$t1" ] || die "$name: $sum of $TOTAL clients connected 30 s after the kill"
  local failover_ms=$((t1 - t0))
  local rc=0
  wait "$sim_pid" || rc=$?
  sim_pid=""
  local j="$tmp/$name.json"
  [ -s "$j" ] || die "$name: client-sim printed no report (exit $rc); see $tmp/$name.log"
  local verdict offline diverged lost reconnects failovers outage_max acked
  verdict=$(jq -r .sequencer.verdict "$j")
  offline=$(jq -r .sequencer.offlineAtEnd "$j")
  diverged=$(jq -r .sequencer.divergedRooms "$j")
  lost=$(jq -r '.sequencer.lostAcks | length' "$j")
  reconnects=$(jq -r .sequencer.reconnects "$j")
  failovers=$(jq -r .sequencer.failovers "$j")
  outage_max=$(jq -r .sequencer.outage.max_ms "$j")
  acked=$(jq -r .sequencer.acked "$j")
  echo "three-nodes check '$name': killed node $victim (${PORTS[$victim]}) with $before of $TOTAL clients;" \
    "every client connected again after ${failover_ms} ms (longest client outage ${outage_max} ms);" \
    "verdict $verdict (exit $rc): offline at end $offline, diverged rooms $diverged, lost acks $lost;" \
    "acked $acked, reconnects $reconnects, failovers $failovers"
  [ "$rc" = 0 ] && [ "$verdict" = CONVERGED ] && [ "$offline" = 0 ] && [ "$diverged" = 0 ] && [ "$lost" = 0 ] \
    || { cat "$tmp/$name.log" >&2; die "$name: verdict $verdict (exit $rc)"; }
  [ "$reconnects" -ge "$before" ] || die "$name: $reconnects reconnects for $before clients of the killed node"
  last_failovers=$failovers
}

# nginx passes the WebSocket upgrade and hashes both socket paths of a room to the same node:
# a bare handshake (curl) over /ws/{room}, then over /parties/main/{room} (client-sim's
# default), must be answered 101 and show up in the same node's connection gauge.
node_of_socket() { # path pk -> the index of the node holding the socket
  local tok node="" c sum
  # No socket open anywhere first (the previous one may still be closing; bounded).
  for _ in $(seq 1 40); do
    sum=0
    for i in 0 1 2; do sum=$((sum + $(connections "${PORTS[$i]}"))); done
    [ "$sum" = 0 ] && break
    sleep 0.05
  done
  tok=$("$BIN" token --secret "$SECRET" --room "$affinity_room" --sub "$2" --name "$2")
  curl -sS -i -N --http1.1 -m 3 -H "Connection: Upgrade" -H "Upgrade: websocket" \
    -H "Sec-WebSocket-Version: 13" -H "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==" \
    "http://127.0.0.1:$NGINX_PORT$1$affinity_room?token=$tok&_pk=$2" >"$tmp/upgrade-$2.out" 2>/dev/null &
  local curl_pid=$!
  for _ in $(seq 1 40); do
    for i in 0 1 2; do
      c=$(connections "${PORTS[$i]}")
      if [ "$c" -gt 0 ]; then
        [ -z "$node" ] || [ "$node" = "$i" ] || die "the room's socket over $1 shows up on nodes $node and $i"
        node=$i
      fi
    done
    [ -n "$node" ] && break
    sleep 0.05
  done
  wait "$curl_pid" 2>/dev/null || true # ends at its 3 s limit: the socket stays open until then
  head -1 "$tmp/upgrade-$2.out" | grep -q " 101 " \
    || die "nginx did not pass the upgrade over $1: $(head -1 "$tmp/upgrade-$2.out")"
  [ -n "$node" ] || die "no node holds the room's socket over $1"
  echo "$node"
}
affinity_room="affinity-$RANDOM"
via_ws=$(node_of_socket /ws/ aff-ws)
via_parties=$(node_of_socket /parties/main/ aff-parties)
[ "$via_ws" = "$via_parties" ] \
  || die "room $affinity_room over /ws/ went to node $via_ws, over /parties/main/ to node $via_parties"
echo "three-nodes check: room $affinity_room through nginx: 101 Switching Protocols and node $via_ws" \
  "over both /ws/{room} and /parties/main/{room}"

killed=""
last_failovers=0
run_with_kill nginx "ws://127.0.0.1:$NGINX_PORT" busiest

# The killed node back, then the clients given the three nodes directly.
start_node "$killed"
wait_http "${PORTS[$killed]}" "node $killed (restarted)"
run_with_kill url-list "ws://127.0.0.1:${PORTS[0]},ws://127.0.0.1:${PORTS[1]},ws://127.0.0.1:${PORTS[2]}" 1
[ "$last_failovers" -gt 0 ] || die "url-list: no client failed over to another URL"
echo "three-nodes check: OK"
