#!/usr/bin/env bash
# The test command: installs what the tests need (only what is missing), checks formatting,
# clippy (warnings are errors) and the JavaScript's syntax, then runs every test: parity with
# the official code on the CPU backend and on wgpu (Mesa's lavapipe when no GPU exists), bad
# input, the CLI, the model file format, the wasm build of the library, and the browser
# end-to-end test in Debian's Chromium (WebGPU on SwiftShader, then the CPU fallback).
source "$(dirname "${BASH_SOURCE[0]}")/setup-web.sh"
cd "$ROOT"

# Software Vulkan device for the native wgpu tests (no GPU on CI).
apt_ensure mesa-vulkan-drivers libvulkan1
# Fashion-MNIST for the data tests (the small model's training set).
apt_ensure dataset-fashion-mnist
# CPython reads `disa convert --to official` checkpoints back with its own zip and pickle.
apt_ensure python3
# wgpu probes Wayland; without a runtime dir it only complains, so give it one.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy (warnings are errors)"
cargo clippy --all-targets -- -D warnings

# The page's scripts and the browser tests have no build step: a syntax error would only show
# in a browser, so every file is parsed here first. The page's .js files are ES modules, parsed
# as such from standard input: Node 20's `node --check file.js` passes a module's syntax errors.
say "node --check (www/ and tests/e2e/ scripts)"
while IFS= read -r -d '' js; do
  case "$js" in
    *.mjs) node --check "$js" ;;
    *) node --input-type=module --check < "$js" || { echo "syntax error in $js" >&2; exit 1; } ;;
  esac
done < <(find www tests/e2e -maxdepth 3 \( -name '*.js' -o -name '*.mjs' \) \
  -not -path '*/node_modules/*' -not -path 'www/assets/*' -print0 | sort -z)

say "cargo test (CPU + wgpu backends)"
cargo test --all-targets -- --test-threads=1

say "wasm32 build of the library"
cargo build --lib --target wasm32-unknown-unknown --no-default-features

bash scripts/e2e.sh

# Not a pass/fail check (timings flake on shared machines): the fused head kernels against
# Burn's tensor ops on this machine's wgpu device (lavapipe on CI), in one run, for the log.
say "disa bench: fused vs tensor head on wgpu (informational)"
"$CARGO_TARGET_DIR/debug/disa" bench --backend wgpu --ar-steps 16 --cfg 3 \
  --schedules linear:50:5 --kernels tensor,fused --repeats 1 || say "bench failed (not fatal)"

say "all tests passed"
