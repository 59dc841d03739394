#!/usr/bin/env bash
# Trunk's post-build hook (Trunk.toml): the library once more, with the `relaxed-simd` feature,
# into Trunk's staging folder as disa-relaxed.js + disa-relaxed_bg.wasm, by the steps Trunk takes
# for disa.js (index.html): cargo for wasm32 without default features, in Trunk's profile;
# wasm-bindgen --target web; in release, wasm-opt -O1. Trunk sets TRUNK_PROFILE and
# TRUNK_STAGING_DIR; run from the project's root.
set -euo pipefail
: "${TRUNK_STAGING_DIR:?run by trunk (Trunk.toml hooks), which sets TRUNK_STAGING_DIR}"
profile="${TRUNK_PROFILE:-debug}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

cargo_args=(build --lib --offline --target wasm32-unknown-unknown --no-default-features
  --features relaxed-simd --message-format=json-render-diagnostics)
[ "$profile" = "release" ] && cargo_args+=(--release)
echo "build-relaxed-wasm: cargo ${cargo_args[*]}" >&2
# The artifact's path from cargo's own report (the target folder may be anywhere).
wasm="$(cargo "${cargo_args[@]}" | grep '"reason":"compiler-artifact"' | grep -o '"[^"]*/disa\.wasm"' \
  | tail -1 | tr -d '"')"
[ -f "$wasm" ] || { echo "build-relaxed-wasm: cargo reported no .wasm artifact" >&2; exit 1; }

out="$(dirname "$wasm")/relaxed-bindgen"
mkdir -p "$out"
wasm-bindgen --target web --no-typescript --out-dir "$out" --out-name disa-relaxed "$wasm"
cp "$out/disa-relaxed.js" "$TRUNK_STAGING_DIR/"
if [ "$profile" = "release" ]; then
  echo "build-relaxed-wasm: wasm-opt -O1" >&2
  wasm-opt -O1 "$out/disa-relaxed_bg.wasm" -o "$TRUNK_STAGING_DIR/disa-relaxed_bg.wasm"
else
  cp "$out/disa-relaxed_bg.wasm" "$TRUNK_STAGING_DIR/"
fi
