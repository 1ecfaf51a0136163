#!/usr/bin/env bash
# HTTP scaling of the proxy on a 16-core machine: outrigger workers 1, 2, 4, 8
# on cores 0..W-1; the upstream (outrigger-load's HTTP server) and the
# generator (8 threads, 256 connections) on cores 8-15. Each point is the
# median of 3 runs of 3 s, from `outrigger-load compare`.
#
# Usage: OUT=results-dir bash loadtest/bench/http_scaling.sh [BIN_DIR]
# (BIN_DIR defaults to target/release; `strip` copies to carry them cheaply.)
set -u
B=${1:-target/release}
OUT=${OUT:-.}
LOAD="8,9,10,11,12,13,14,15"
nproc; uname -r
COMMON="--runs 3 -d 3s --warmup 2s -c 256 -t 8 --load-cpus $LOAD --outrigger $B/outrigger"
"$B/outrigger-load" compare --targets direct --proxy-cpus 0 $COMMON \
    --json "$OUT/direct.json" --markdown "$OUT/direct.md" 2>&1 | tail -8
for W in 1 2 4 8; do
    CPUS=$(seq -s, 0 $((W - 1)))
    "$B/outrigger-load" compare --targets outrigger --proxy-cpus "$CPUS" $COMMON \
        --json "$OUT/w$W.json" --markdown "$OUT/w$W.md" 2>&1 | tail -6
done
