#!/usr/bin/env bash
# The main job: builds the studio page (ot-core in WebAssembly, the TypeScript client, the
# page) and the server, then runs the server on the embedded SQLite store with the page at
# http://127.0.0.1:1999/. Without --secret it prints a URL with a ready demo token: open it in
# two windows and edit together. Arguments go to the server (`--listen 0.0.0.0:8080`,
# `--secret …`, `--memory`; `sequencer serve --help` lists them all).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build-web.sh
printf '\033[1m==> building the server\033[0m\n' >&2
cargo build --release -p sequencer
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
exec "$target_dir/release/sequencer" --web-dir web/dist "$@"
