#!/usr/bin/env bash
# The CPU path beside the official PyTorch code, same machine, same weights, one run:
#   scripts/bench-official.sh MAR_DIR
# MAR_DIR is a checkout of https://github.com/LTH14/mar (never committed here). Builds the
# release CLI, exports the built-in model with `disa convert --to official`, then for each
# thread count (THREADS, default "2 1") and batch (BATCHES, default "1 8") runs `disa bench
# --backend cpu` and scripts/official_bench.py: K = 16, CFG 3, constant:100 and linear 50->5,
# ms per image, median of REPEATS (default 3) after a warm-up. The official side's Python
# packages (torch, timm, scipy) go into a virtual environment under ~/.cache/disa, only when
# missing.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

MAR_DIR="$(mar_checkout "${1:?usage: scripts/bench-official.sh MAR_DIR (a checkout of LTH14/mar)}")"
THREADS="${THREADS:-2 1}" BATCHES="${BATCHES:-1 8}" REPEATS="${REPEATS:-3}"

apt_ensure python3 python3-venv
VENV="$HOME/.cache/disa/official-venv"
if ! "$VENV/bin/python" -c "import torch, timm, scipy" 2>/dev/null; then
  say "python packages for the official code (torch, timm, scipy) in $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch "timm==0.9.16" scipy numpy
fi

say "cargo build --release --bin disa"
cargo build --release --bin disa
DISA="$CARGO_TARGET_DIR/release/disa"
WEIGHTS="$HOME/.cache/disa/builtin-official.pth"
"$DISA" convert --to official --out "$WEIGHTS" >/dev/null

for b in $BATCHES; do
  for t in $THREADS; do
    say "disa, $t threads, batch $b"
    RAYON_NUM_THREADS=$t "$DISA" bench --backend cpu --ar-steps 16 --cfg 3 --batch "$b" \
      --repeats "$REPEATS" --schedules "constant:100;linear:50:5"
    say "official, $t threads, batch $b"
    OMP_WAIT_POLICY=PASSIVE "$VENV/bin/python" -W ignore scripts/official_bench.py "$MAR_DIR" \
      --model builtin --weights "$WEIGHTS" --device cpu --threads "$t" --batch "$b" \
      --ar-steps 16 --repeats "$REPEATS" --schedules "constant:100;linear:50:5"
  done
done
