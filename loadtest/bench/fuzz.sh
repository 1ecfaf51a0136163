#!/usr/bin/env bash
# Run every fuzz target (tests/fuzz.rs) for SECONDS each, from a fresh seed
# per target (printed before its first iteration), on a release build. A
# failure prints the seed, the iteration and the failing input in hex; put
# the input in tests/fuzz-corpus/TARGET/ and repeat with FUZZ_SEED.
#   loadtest/bench/fuzz.sh 600      # ten minutes per target
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_TARGET=${1:-60}
FUZZ_SECONDS=$SECONDS_PER_TARGET \
    cargo test --release --test fuzz -- --nocapture --test-threads=1 2>&1 |
    grep -E -A3 "^fuzz [a-z_0-9]+: |test result|panicked|fuzz [a-z_0-9]+: .* failed"
