#!/usr/bin/env bash
# Run every fuzz target (tests/fuzz.rs) for SECONDS each, from a random
# seed (printed with the executions), on a release build.
#   loadtest/bench/fuzz.sh 600      # ten minutes per target
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_TARGET=${1:-60}
OUTRIGGER_FUZZ_SECONDS=$SECONDS_PER_TARGET \
    cargo test --release --test fuzz -- --nocapture --test-threads=1 2>&1 | grep -oE "fuzz [a-z_]+: .*|test result.*|panicked.*"
