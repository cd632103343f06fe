#!/usr/bin/env bash
# Runs three sequencer nodes on one PostgreSQL database and one Redis bus:
#   ws://127.0.0.1:2001, :2002, :2003 — clients of one room may use any of them.
# Needs PostgreSQL (trust auth) and Redis on this machine; see docs/scale-out.md.
#
#   scripts/three-nodes.sh            # build, create database `sequencer`, start, wait for Ctrl-C
#   PG=postgres://me@db:5432 REDIS=redis://cache:6379 scripts/three-nodes.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PG=${PG:-postgres://postgres@127.0.0.1:5432}
DB=${DB:-sequencer}
REDIS=${REDIS:-redis://127.0.0.1:6379}
SECRET=${SEQUENCER_SECRET:-three-nodes-dev-secret}
PORTS=(${PORTS:-2001 2002 2003})

cargo build --release -p sequencer
BIN=${CARGO_TARGET_DIR:-target}/release/sequencer

# The database must exist; the schema is created by the first node that starts.
psql "$PG/postgres" -Atc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 \
  || psql "$PG/postgres" -c "CREATE DATABASE $DB"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait; }
trap cleanup EXIT INT TERM

for port in "${PORTS[@]}"; do
  "$BIN" serve --listen "127.0.0.1:$port" --secret "$SECRET" \
    --store "$PG/$DB" --bus "$REDIS" --bus-prefix "three-nodes:" &
  pids+=($!)
done

sleep 1
echo
echo "three nodes up on ports ${PORTS[*]} (store $PG/$DB, bus $REDIS)"
echo "a room token for room demo:"
echo "  $("$BIN" token --secret "$SECRET" --room demo --sub alice --name Alice)"
echo "simulate 50 clients of one room spread over the three nodes:"
echo "  cargo run --release -p client-sim -- --secret $SECRET --rooms 1 --clients 50 \\"
echo "    --url ws://127.0.0.1:${PORTS[0]},ws://127.0.0.1:${PORTS[1]},ws://127.0.0.1:${PORTS[2]}"
echo "Ctrl-C stops all three."
wait
