#!/usr/bin/env bash
# Sequencer vs relay with each server in its own process, so that server CPU per acked op can
# be read from /proc/<pid>/stat apart from the simulator's. Usage:
#   client-sim/bench.sh [memory|sqlite] ROOMS CLIENTS [SECONDS] [CURSOR_HZ]
# Needs `cargo build --release -p client-sim -p sequencer` first; binaries are taken from
# ${CARGO_TARGET_DIR:-target}/release. Binds 127.0.0.1 only; both servers are stopped at the end.
set -euo pipefail
store=${1:-memory}; rooms=${2:-100}; clients=${3:-5}; secs=${4:-10}; hz=${5:-5}
bin=${CARGO_TARGET_DIR:-target}/release
secret=bench-secret
tmp=$(mktemp -d)
if [ "$store" = sqlite ]; then store_flag=(--data-dir "$tmp/data"); else store_flag=(--memory); fi
"$bin/sequencer" serve --listen 127.0.0.1:0 "${store_flag[@]}" --secret "$secret" --rate-limit 0 >"$tmp/seq.log" 2>&1 &
seq_pid=$!
"$bin/client-sim" --serve-relay 127.0.0.1:0 >"$tmp/relay.log" 2>&1 &
relay_pid=$!
trap 'kill $seq_pid $relay_pid 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do
  grep -q "listening on" "$tmp/seq.log" && grep -q "listening on" "$tmp/relay.log" && break
  sleep 0.1
done
seq_addr=$(grep -o "listening on [^ ]*" "$tmp/seq.log" | head -1 | awk '{print $3}' | sed 's#^ws://##; s#^http://##')
relay_url=$(grep -o "ws://[^ ]*" "$tmp/relay.log" | head -1)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
s0=$(ticks $seq_pid); r0=$(ticks $relay_pid)
"$bin/client-sim" --url "ws://$seq_addr" --rooms "$rooms" --clients "$clients" --ops 100000000 --rate 0 \
  --duration "$secs" --cursor-hz "$hz" --seed 42 --secret "$secret" --relay --relay-url "$relay_url" --quiet --json >"$tmp/out.json"
s1=$(ticks $seq_pid); r1=$(ticks $relay_pid)
python3 - "$tmp/out.json" $((s1 - s0)) $((r1 - r0)) <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); hz = 100.0
s, r = d["sequencer"], d["relay"]
sc, rc = int(sys.argv[2]) / hz, int(sys.argv[3]) / hz
spo, rpo = sc * 1e6 / max(s["acked"], 1), rc * 1e6 / max(r["acked"], 1)
print(json.dumps({"ok": s["ok"], "seqOpsPerSec": round(s["ackedPerSec"]), "relayOpsPerSec": round(r["ackedPerSec"]),
  "opsRatio": round(s["ackedPerSec"] / max(r["ackedPerSec"], 1e-9), 3),
  "seqAckMs": [s["ack"]["p50_ms"], s["ack"]["p99_ms"], s["ack"]["p999_ms"]],
  "relayAckMs": [r["ack"]["p50_ms"], r["ack"]["p99_ms"], r["ack"]["p999_ms"]],
  "p99Ratio": round(s["ack"]["p99_ms"] / max(r["ack"]["p99_ms"], 1e-9), 2),
  "serverCpuSecs": [sc, rc], "serverCpuUsPerOp": [round(spo, 1), round(rpo, 1)],
  "cpuPerOpRatio": round(spo / max(rpo, 1e-9), 2),
  "cursorsPerSec": [round(s["cursorsDeliveredPerSec"]), round(r["cursorsDeliveredPerSec"])]}))
PY
