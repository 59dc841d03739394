#!/usr/bin/env bash
# The main command: installs what is missing, builds the browser demo (release wasm) and
# serves it at http://127.0.0.1:${PORT:-8080}/ with the shipped default model.
source "$(dirname "${BASH_SOURCE[0]}")/setup-web.sh"
cd "$ROOT"

PORT="${PORT:-8080}"
# Rebuild only when a source changed since the last release build (wasm-opt alone takes minutes).
if [ -f dist/.release-stamp ] && [ -z "$(find src www Cargo.toml Cargo.lock Trunk.toml .cargo -newer dist/.release-stamp -print -quit)" ]; then
  say "the release page in dist/ is up to date"
else
  say "building the page (release wasm; the first build takes a while)"
  trunk build --release
  touch dist/.release-stamp
fi
say "Chrome/Edge use WebGPU when available; elsewhere the page falls back to the CPU."
exec node scripts/serve.mjs dist "$PORT"
