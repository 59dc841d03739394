#!/usr/bin/env bash
# The page's speed beside the native CLI's, in one run (tests/e2e/bench-page.mjs):
#   scripts/bench-page.sh                # CPU fallback vs native single-threaded disa
#   scripts/bench-page.sh --backend webgpu   # WebGPU: Burn's tensor ops vs the fused kernels
# Extra options go to bench-page.mjs (--schedules, --ar-steps, --cfg, --repeats, --warmup, --json FILE).
# Builds the release page (as scripts/demo.sh, only when a source changed) and the release CLI.
source "$(dirname "${BASH_SOURCE[0]}")/setup-web.sh"
cd "$ROOT"

release_page
say "cargo build --release --bin disa"
cargo build --release --bin disa
say "bench"
DISA_BIN="$CARGO_TARGET_DIR/release/disa" node tests/e2e/bench-page.mjs "$@"
