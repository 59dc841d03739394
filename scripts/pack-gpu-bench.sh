#!/usr/bin/env bash
# Packs what scripts/bench-gpu.sh needs on a GPU machine that builds nothing:
#   scripts/pack-gpu-bench.sh DIR MAR_DIR
# DIR (inside the repository, ignored by git: .gpu-bench/ is) gets the release CLI stripped and
# xz-compressed (disa.xz), a copy of MAR_DIR's code (mar/; a checkout of LTH14/mar, never
# committed) and the x86-64 Vulkan loader's Debian package (gl/). Then, on that machine:
#   scripts/bench-gpu.sh DIR
# (with the project's device tool: carry DIR, run `bash scripts/bench-gpu.sh DIR`).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"
DIR="${1:?usage: scripts/pack-gpu-bench.sh DIR MAR_DIR}"
MAR_DIR="$(mar_checkout "${2:?usage: scripts/pack-gpu-bench.sh DIR MAR_DIR (a checkout of LTH14/mar)}")"
mkdir -p "$DIR/gl"

say "cargo build --release --bin disa"
cargo build --release --bin disa
strip -o "$DIR/disa" "$CARGO_TARGET_DIR/release/disa"
xz -T0 -6 -f "$DIR/disa"

say "the official code from $MAR_DIR (no weights)"
rm -rf "$DIR/mar" && mkdir -p "$DIR/mar"
(cd "$MAR_DIR" && tar -c --exclude=.git --exclude='*.pth' --exclude='*.ckpt' --exclude=pretrained_models .) | tar -x -C "$DIR/mar"

say "the Vulkan loader (x86-64 Debian package)"
lists=/tmp/disa-apt-amd64
mkdir -p "$lists/partial"
apt_opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$lists")
ls "$DIR"/gl/libvulkan1_*.deb > /dev/null 2>&1 || {
  apt-get "${apt_opts[@]}" update -qq
  (cd "$DIR/gl" && apt-get "${apt_opts[@]}" download libvulkan1)
}
du -sh "$DIR"/* | sed 's/^/  /'
