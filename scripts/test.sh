#!/usr/bin/env bash
# The test command: every crate's unit, property, simulation, integration and corpus tests,
# built once in release mode, then the browser side: the TypeScript client in Node and the
# studio page in headless Chromium, both against the real server binary. Installs what it
# needs (the wasm32 target, wasm-bindgen-cli, npm packages, Debian's chromium).
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
