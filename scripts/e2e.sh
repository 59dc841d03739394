#!/usr/bin/env bash
# Browser end-to-end test: builds the page (Trunk, dev profile unless DISA_WEB_PROFILE=release)
# and the native CLI, then drives Debian's Chromium through playwright-core
# (tests/e2e/e2e.test.mjs, teach.test.mjs), after the browser-free checks of the page's source
# (tests/e2e/static.test.mjs). Screenshots land in tests/e2e/screenshots/.
source "$(dirname "${BASH_SOURCE[0]}")/setup-web.sh"
cd "$ROOT"

cargo build --bin disa
profile_flag=()
[ "${DISA_WEB_PROFILE:-dev}" = "release" ] && profile_flag=(--release)
rm -f dist/.release-stamp # dist/ is about to hold another build
say "trunk build ${profile_flag[*]}"
trunk build "${profile_flag[@]}"

cd tests/e2e
say "page source checks (every script parses, no schedule arithmetic in JS, the protocol file matches the code)"
node --test --test-reporter=spec static.test.mjs

say "browser end-to-end test (Chromium, WebGPU on SwiftShader, then the CPU fallback)"
# E2E_TESTS=PATTERN runs only the tests whose name matches (e.g. E2E_TESTS=layout).
pattern=()
[ -n "${E2E_TESTS:-}" ] && pattern=(--test-name-pattern="$E2E_TESTS")
DISA_BIN="$CARGO_TARGET_DIR/debug/disa" node --test --test-reporter=spec "${pattern[@]}" e2e.test.mjs teach.test.mjs
