#!/usr/bin/env bash
# Runs every test (`make test`): installs what is missing first, then
#   1. formatting and lints,
#   2. native unit tests of the pure code, and the fuzz seeds replayed (cargo test),
#   3. wasm32 tests of the clock, randomness and signing (wasm-bindgen-test under node),
#   4. the release build of the worker,
#   5. end-to-end tests of the built worker in workerd against the fake Kling, including
#      the demo page in headless Chromium and schemathesis against /openapi.json.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$PROJECT_ROOT"

scripts/setup.sh --tests
export PATH="$PROJECT_ROOT/node_modules/.bin:$CARGO_BIN:$PATH"

say "1/5 format and lints"
cargo fmt --check
cargo clippy --quiet --all-targets -- -D warnings
(wasm_build_env && cargo clippy --quiet --release --target "$WASM_TARGET" -- -D warnings)

say "2/5 native unit tests"
cargo test --quiet

say "3/5 wasm32 tests (wasm-bindgen-test under node)"
(
  wasm_build_env
  export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER="$CARGO_BIN/wasm-bindgen-test-runner"
  cargo test --target "$WASM_TARGET" --test wasm
)

say "4/5 release build"
scripts/build.sh

say "5/5 end-to-end tests (workerd via wrangler dev, fake Kling on loopback)"
node --test --test-reporter=spec tests/e2e/*.test.mjs

say "all tests passed"
