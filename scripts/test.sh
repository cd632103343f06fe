#!/usr/bin/env bash
# The test command: every crate's unit, property, simulation, integration and corpus tests,
# built once in release mode. Longer runs: OT_PROPTEST_CASES, OT_SIM_SEEDS (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --release "$@"
