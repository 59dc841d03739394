#!/usr/bin/env bash
# The GPU table, official PyTorch (CUDA, eager) beside `disa bench --backend wgpu`, same GPU, one run:
#   scripts/bench-gpu.sh DIR
# Meant for a machine with an NVIDIA GPU, its Vulkan driver and python3 with torch, timm and scipy
# (the project's device machine), where nothing is built: DIR is what scripts/pack-gpu-bench.sh
# packed here — `disa.xz` (a stripped release CLI), `mar/` (a checkout of LTH14/mar, never
# committed) and `gl/*.deb` (the Vulkan loader, unpacked when the machine has none).
# Rows (ms per image, CFG 3, median of REPEATS, default 2, after a warm-up):
#   MAR-B shapes (fresh weights; speed does not depend on their values), batch 1:
#     K=16 constant:100 and linear:50:5, K=64 linear:50:5; batch 64: K=16 constant:100
#   the built-in model, K=16, constant:100 and linear:50:5, batch 1 (and disa on the CPU)
# disa runs each row with --kernels $KERNELS (default tensor,fused). ROWS picks rows (default "b16 b64k b16x64 builtin").
# Everything printed is also written to $OUT/bench-gpu.log when OUT is set. For a dry run
# without CUDA: TORCH_DEVICE=cpu PYTHON=a-python-with-torch ROWS=builtin.
set -euo pipefail
DIR="$(cd "${1:?usage: scripts/bench-gpu.sh DIR (packed by scripts/pack-gpu-bench.sh)}" && pwd)"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPEATS="${REPEATS:-2}" KERNELS="${KERNELS:-tensor,fused}" ROWS="${ROWS:-b16 b64k b16x64 builtin}"
LOG="${OUT:-/tmp}/bench-gpu.log"
exec > >(tee "$LOG") 2>&1

if ! ldconfig -p | grep -q libvulkan.so.1; then
  [ -d "$DIR/gl" ] || { echo "no Vulkan loader here and no $DIR/gl/*.deb to unpack" >&2; exit 2; }
  for f in "$DIR"/gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
# The NVIDIA driver's Vulkan ICD where the loader does not find it by itself.
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES="${VK_DRIVER_FILES:-$icd}"
DISA=/tmp/disa-gpu-bench
xz -dc "$DIR/disa.xz" > "$DISA" && chmod +x "$DISA"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
PYTHON="${PYTHON:-python3}" TORCH_DEVICE="${TORCH_DEVICE:-cuda}"
"$PYTHON" -W ignore -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"

official() { "$PYTHON" -W ignore scripts/official_bench.py "$DIR/mar" --device "$TORCH_DEVICE" --repeats "$REPEATS" "$@"; }
ours() { "$DISA" bench --backend wgpu --cfg 3 --repeats "$REPEATS" --kernels "$KERNELS" "$@"; }

for row in $ROWS; do
  case "$row" in
    b16)
      echo "== MAR-B shapes, K=16, batch 1"
      official --model mar_base --ar-steps 16 --schedules "constant:100;linear:50:5"
      ours --shapes mar_base --ar-steps 16 --schedules "constant:100;linear:50:5" ;;
    b64k)
      echo "== MAR-B shapes, K=64, batch 1"
      official --model mar_base --ar-steps 64 --schedules "linear:50:5"
      ours --shapes mar_base --ar-steps 64 --schedules "linear:50:5" ;;
    b16x64)
      echo "== MAR-B shapes, K=16, batch 64"
      official --model mar_base --ar-steps 16 --batch 64 --schedules "constant:100"
      ours --shapes mar_base --ar-steps 16 --batch 64 --schedules "constant:100" ;;
    builtin)
      echo "== the built-in model, K=16, batch 1"
      weights="$DIR/builtin-official.pth"
      "$DISA" convert --to official --out "$weights" > /dev/null
      official --model builtin --weights "$weights" --ar-steps 16 --schedules "constant:100;linear:50:5"
      ours --ar-steps 16 --schedules "constant:100;linear:50:5"
      echo "-- disa on the CPU ($(nproc) threads)"
      "$DISA" bench --backend cpu --cfg 3 --repeats "$REPEATS" --ar-steps 16 --schedules "constant:100;linear:50:5" ;;
    *) echo "unknown row $row (b16, b64k, b16x64, builtin)" >&2; exit 2 ;;
  esac
done
