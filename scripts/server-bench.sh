#!/usr/bin/env bash
# The server benchmark: the sequencer against the bare relay, each server in its own process
# pinned to one core, the load generator (client-sim's `loadgen`) pinned to another, every
# server started fresh for every run. Prints one JSON line per run, then medians and the
# sequencer/relay ratios. See BENCHMARKS.md, "Server benchmark".
#
#   scripts/server-bench.sh            # every workload, memory and SQLite, 3 runs of 5 s each
#   scripts/server-bench.sh idle       # idle sockets: RSS at start and with IDLE_COUNT sockets
#
# Environment (defaults in brackets):
#   SECS [5]          measured seconds per run (a longer setting: SECS=20)
#   WARMUP [1]        seconds run before the measured window
#   REPS [3]          runs per (workload, server); the table shows medians
#   WORKLOADS         space-separated ROOMSxCLIENTS:KIND [20x5:update 100x5:update 1x50:update 20x5:insert]
#   STORES            [memory sqlite] (the relay always runs)
#   SERVER_CPU [0]    core the server is pinned to;  GEN_CPU [1]  core of the load generator
#   IDLE_COUNT [19900] sockets opened by `idle` (needs `ulimit -n` above it in both processes)
#   SKIP_BUILD=1      use the binaries already in ${CARGO_TARGET_DIR:-target}/release
#   BASE              a directory holding another build's `sequencer` (a `target/release`): its
#                     stores run too, interleaved, as `memory@base` and `sqlite@base`, so that a
#                     before/after pair is measured in one run (build it in a `git worktree`)
#   OUT               file the JSON lines are appended to
#                     [${CARGO_TARGET_DIR:-target}/server-bench/runs-DATE.jsonl]
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-ops}
secs=${SECS:-5}
warmup=${WARMUP:-1}
reps=${REPS:-3}
workloads=${WORKLOADS:-"20x5:update 100x5:update 1x50:update 20x5:insert"}
stores=${STORES:-"memory sqlite"}
if [ -n "${BASE:-}" ]; then
  [ -x "$BASE/sequencer" ] || { echo "BASE=$BASE holds no sequencer binary" >&2; exit 1; }
  for s in $stores; do stores="$stores $s@base"; done
fi
server_cpu=${SERVER_CPU:-0}
gen_cpu=${GEN_CPU:-1}
bin=${CARGO_TARGET_DIR:-target}/release
secret=bench-secret
clk=$(getconf CLK_TCK)

if [ -z "${SKIP_BUILD:-}" ]; then
  echo "==> cargo build --release -p sequencer -p client-sim" >&2
  cargo build --release -p sequencer -p client-sim --bins >&2
fi

tmp=$(mktemp -d)
mkdir -p "${CARGO_TARGET_DIR:-target}/server-bench"
out=${OUT:-${CARGO_TARGET_DIR:-target}/server-bench/runs-$(date +%Y%m%d-%H%M%S).jsonl}
server_pid=
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
trap 'stop_server; rm -rf "$tmp"' EXIT

# start_server KIND: starts `relay`, `memory` or `sqlite` (`memory@base`, `sqlite@base`: $BASE's
# build) pinned to $server_cpu; sets $server_pid and $server_url.
start_server() {
  local kind=${1%@base} log=$tmp/server.log seq=$bin/sequencer
  [ "$1" != "$kind" ] && seq=$BASE/sequencer
  rm -rf "$tmp/data"
  case $kind in
    relay) taskset -c "$server_cpu" "$bin/client-sim" --serve-relay 127.0.0.1:0 >"$log" 2>&1 & ;;
    memory) taskset -c "$server_cpu" "$seq" serve --listen 127.0.0.1:0 --memory \
      --secret "$secret" --rate-limit 0 --heartbeat-timeout 600 >"$log" 2>&1 & ;;
    sqlite) taskset -c "$server_cpu" "$seq" serve --listen 127.0.0.1:0 --data-dir "$tmp/data" \
      --secret "$secret" --rate-limit 0 --heartbeat-timeout 600 >"$log" 2>&1 & ;;
  esac
  server_pid=$!
  local addr=
  for _ in $(seq 200); do
    addr=$(grep -aoE 'listening on (ws://|http://)?[0-9.]+:[0-9]+' "$log" | head -1 | awk '{print $3}' | sed 's#^ws://##; s#^http://##' || true)
    [ -n "$addr" ] && break
    sleep 0.05
  done
  [ -n "$addr" ] || { cat "$log" >&2; echo "server $kind did not start" >&2; exit 1; }
  server_url=ws://$addr
}

if [ "$mode" = idle ]; then
  count=${IDLE_COUNT:-19900}
  ulimit -n 20000 2>/dev/null || true
  start_server memory
  sleep 0.5
  start_rss=$(awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status")
  echo "==> sequencer (memory) idle RSS at start: ${start_rss} kB; opening $count idle sockets" >&2
  taskset -c "$gen_cpu" "$bin/loadgen" idle --url "$server_url" --secret "$secret" --count "$count" \
    --pid "$server_pid" | tee -a "$out"
  stop_server
  exit 0
fi

echo "==> $reps runs of ${warmup}+${secs}s per workload and server; JSON lines in $out" >&2
for rep in $(seq "$reps"); do
  for w in $workloads; do
    shape=${w%%:*}; kind=${w##*:}; rooms=${shape%%x*}; clients=${shape##*x}
    for server in relay $stores; do
      start_server "$server"
      relay_flag=()
      [ "$server" = relay ] && relay_flag=(--relay)
      line=$(taskset -c "$gen_cpu" "$bin/loadgen" ops --url "$server_url" --secret "$secret" \
        --rooms "$rooms" --clients "$clients" --workload "$kind" --duration "$secs" --warmup "$warmup" \
        --pid "$server_pid" --clk-tck "$clk" --label "$w/$server" "${relay_flag[@]}" 2>"$tmp/loadgen.err") || {
        echo "run $rep $w $server failed (not counted): $(head -3 "$tmp/loadgen.err" | tr '\n' ' ')" >&2
        stop_server
        continue
      }
      stop_server
      echo "$line" >>"$out"
      echo "run $rep $w $server: $line" >&2
    done
  done
done

python3 - "$out" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in runs:
    w, s = r["label"].rsplit("/", 1)
    by.setdefault(w, {}).setdefault(s, []).append(r)
med = lambda rs, f: statistics.median(f(r) for r in rs)
print()
print("| workload | server | acked ops/s | ratio | ack p50 / p99 ms | p99 ratio | server CPU µs/op | CPU ratio | peak RSS MB | errors |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for w, servers in by.items():
    rel = servers.get("relay")
    if rel:
        r_ops = med(rel, lambda r: r["opsPerSec"]); r_p99 = med(rel, lambda r: r["ackUs"]["p99"])
        r_cpu = med(rel, lambda r: r["serverCpuUsPerOp"])
    for s, rs in servers.items():
        ops = med(rs, lambda r: r["opsPerSec"]); p50 = med(rs, lambda r: r["ackUs"]["p50"])
        p99 = med(rs, lambda r: r["ackUs"]["p99"]); cpu = med(rs, lambda r: r["serverCpuUsPerOp"])
        rss = med(rs, lambda r: r["serverPeakRssKb"] or 0) / 1024; err = sum(r["errors"] for r in rs)
        ratio = lambda a, b: f"{a / b:.2f}" if rel and b else "–"
        print(f"| {w} | {s} | {ops:,.0f} | {ratio(ops, r_ops)} | {p50/1000:.2f} / {p99/1000:.2f} | "
              f"{ratio(p99, r_p99)} | {cpu:.1f} | {ratio(cpu, r_cpu)} | {rss:.1f} | {err} |")
PY
echo "(runs: $out)" >&2
