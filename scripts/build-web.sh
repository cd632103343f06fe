#!/usr/bin/env bash
# Builds what the studio page needs: ot-core's client session in WebAssembly (web/ot-wasm,
# through wasm-bindgen), the TypeScript client (web/client/dist) and the page (web/dist).
# Installs what it needs first: the wasm32 target, wasm-bindgen-cli at the version the crate
# pins, and the npm packages of web/package-lock.json.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  say "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

# The CLI must match the wasm-bindgen crate exactly (web/ot-wasm/Cargo.toml pins it).
want=$(sed -n 's/^wasm-bindgen = "=\(.*\)"/\1/p' web/ot-wasm/Cargo.toml)
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
  say "installing wasm-bindgen-cli $want (found: ${have:-none}); this compiles for a few minutes, once"
  cargo install wasm-bindgen-cli --version "$want"
fi

say "building ot-core's client session for wasm32"
cargo build -p ot-wasm --target wasm32-unknown-unknown --profile wasm
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
wasm-bindgen --target web --out-dir web/client/wasm "$target_dir/wasm32-unknown-unknown/wasm/ot_wasm.wasm"

cd web
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm packages (npm ci)"
  npm ci --no-audit --no-fund
fi
say "building the client and the studio page"
npm run build --silent
say "built: $root/web/dist ($(du -sh dist | cut -f1))"
