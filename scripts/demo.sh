#!/usr/bin/env bash
# The main command: installs what is missing, builds the browser demo (release wasm) and
# serves it at http://127.0.0.1:${PORT:-8080}/ with the shipped default model.
source "$(dirname "${BASH_SOURCE[0]}")/setup-web.sh"
cd "$ROOT"

PORT="${PORT:-8080}"
release_page
say "Chrome/Edge use WebGPU when available; elsewhere the page falls back to the CPU."
exec node scripts/serve.mjs dist "$PORT"
