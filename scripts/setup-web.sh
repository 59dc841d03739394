#!/usr/bin/env bash
# Installs what the browser demo needs, only what is missing: the wasm target, Trunk,
# wasm-bindgen-cli (the version in Cargo.lock), Node packages (binaryen's wasm-opt,
# playwright-core) and Debian's Chromium for the end-to-end test. Source or run it.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

rust_target_ensure wasm32-unknown-unknown
command -v npm >/dev/null || apt_ensure nodejs npm
[ -x /usr/bin/chromium ] || apt_ensure chromium

# Trunk 0.21.14: newer ones need a newer rustc. ~11 min to build on 2 cores, so only once.
if ! command -v trunk >/dev/null || ! trunk --version | grep -q '0.21.14'; then
  say "cargo install trunk 0.21.14"
  (unset CARGO_TARGET_DIR; cargo install trunk --version 0.21.14 --locked)
fi

# wasm-bindgen-cli must match the wasm-bindgen crate exactly; Trunk would otherwise try to
# download one, which fails offline.
WBG_VERSION="$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')"
if ! command -v wasm-bindgen >/dev/null || ! wasm-bindgen --version | grep -q "$WBG_VERSION"; then
  say "cargo install wasm-bindgen-cli $WBG_VERSION"
  (unset CARGO_TARGET_DIR; cargo install wasm-bindgen-cli --version "$WBG_VERSION")
fi

if [ ! -x tests/e2e/node_modules/.bin/wasm-opt ] || [ ! -d tests/e2e/node_modules/playwright-core ]; then
  say "npm install (binaryen, playwright-core)"
  (cd tests/e2e && npm install --no-audit --no-fund --loglevel=error)
fi
export PATH="$ROOT/tests/e2e/node_modules/.bin:$PATH"

# release_page: builds the release page into dist/, only when a source changed since the last
# release build (wasm-opt alone takes minutes). scripts/e2e.sh's dev build clears the stamp.
release_page() {
  if [ -f dist/.release-stamp ] && [ -z "$(find src www Cargo.toml Cargo.lock Trunk.toml .cargo scripts/build-relaxed-wasm.sh -newer dist/.release-stamp -print -quit)" ]; then
    say "the release page in dist/ is up to date"
  else
    say "building the page (release wasm; the first build takes a while)"
    trunk build --release
    touch dist/.release-stamp
  fi
}

# The page's default model is committed: www/assets/model.safetensors, the Fashion-MNIST MAR
# trained by `disa train` (see the README). The CLI builds it in as its default too.
cargo build --bin disa
