#!/usr/bin/env bash
# The main command: builds the `disa` CLI (release) and generates images with the reference
# weights shipped in tests/reference, then prints where they are.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

say "building disa (release)"
cargo build --release --bin disa

REF="${DISA_REFERENCE:-$ROOT/tests/reference/mar-tiny}"
OUT="${DISA_OUT:-$ROOT/out}"
mkdir -p "$OUT"
DISA="$CARGO_TARGET_DIR/release/disa"

say "the plan: DiSA linear 50→5 over 8 AR steps"
"$DISA" schedule --ar-steps 8 --tokens 16 --schedule linear:50:5

say "generating: baseline (constant 50 steps) and DiSA (linear 50→5), same seed"
"$DISA" generate --weights "$REF/checkpoint-last.pth" --class 3,7 --seed 7 --ar-steps 8 \
  --cfg 2.0 --schedule constant:50 --out "$OUT/baseline.png"
"$DISA" generate --weights "$REF/checkpoint-last.pth" --class 3,7 --seed 7 --ar-steps 8 \
  --cfg 2.0 --schedule linear:50:5 --out "$OUT/disa.png"
say "images in $OUT"
