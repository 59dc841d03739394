#!/usr/bin/env bash
# The test command: installs what the tests need (only what is missing), then runs every test
# natively (CPU backend and wgpu on Mesa's lavapipe when no GPU exists) and checks that the
# library builds for wasm32.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

# Software Vulkan device for the wgpu tests (no GPU on CI).
apt_ensure mesa-vulkan-drivers libvulkan1
rust_target_ensure wasm32-unknown-unknown

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo test (CPU + wgpu backends)"
cargo test --all-targets -- --test-threads=1

say "wasm32 build of the library"
cargo build --lib --target wasm32-unknown-unknown --no-default-features

say "all tests passed"
