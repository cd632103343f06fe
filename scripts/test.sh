#!/usr/bin/env bash
# The test command: every crate's unit, property, simulation, integration and corpus tests,
# built once in release mode, then the browser side: the TypeScript client in Node and the
# studio page in headless Chromium, both against the real server binary. Installs what it
# needs (the wasm32 target, wasm-bindgen-cli, npm packages, Debian's chromium).
# After the cargo tests, `scripts/three-nodes.sh --check`: three nodes on PostgreSQL and Redis
# behind Debian's nginx, one SIGKILLed mid-run (skipped with a message when PostgreSQL or Redis
# is down, unless CI is set: then it fails, like the cargo tests that need them).
# Longer runs: OT_PROPTEST_CASES, OT_SIM_SEEDS (see README). `--rust-only` skips the browser side.
set -euo pipefail
cd "$(dirname "$0")/.."

rust_only=false
if [ "${1:-}" = "--rust-only" ]; then
  rust_only=true
  shift
fi

if ! $rust_only; then
  scripts/build-web.sh
  (cd web && npm run typecheck --silent)
fi

cargo test --workspace --release "$@"

# The nginx / failover check needs both services (scripts/services.sh starts the local ones).
if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null && [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; then
  scripts/three-nodes.sh --check
elif [ -n "${CI:-}" ]; then
  echo "error: scripts/three-nodes.sh --check needs PostgreSQL and Redis on 127.0.0.1 (see scripts/services.sh)" >&2
  exit 1
else
  echo "SKIPPED scripts/three-nodes.sh --check: PostgreSQL or Redis is not up (scripts/services.sh starts them)" >&2
fi

if $rust_only; then
  exit 0
fi

if ! command -v chromium >/dev/null 2>&1 && [ -z "${CHROMIUM:-}" ]; then
  echo "==> installing Debian's chromium for the browser tests" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y --no-install-recommends chromium >/dev/null || { apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium >/dev/null; }
  else
    sudo apt-get install -y --no-install-recommends chromium >/dev/null
  fi
fi

target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
export SEQUENCER_BIN="$target_dir/release/sequencer"
export CLIENT_SIM_BIN="$target_dir/release/client-sim"
cargo build --release -p sequencer -p client-sim
cd web
npm test
