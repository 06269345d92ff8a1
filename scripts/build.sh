#!/usr/bin/env bash
# Builds the Worker into build/ (wrangler.toml's [build] command; `make build`).
# Skips the build when nothing it depends on changed since the last one.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$PROJECT_ROOT"

stamp=build/.built
if [ -f "$stamp" ] && [ -f build/index.js ] &&
   [ -z "$(find src Cargo.toml Cargo.lock -newer "$stamp" -print -quit)" ]; then
  say "build/ is up to date"
  exit 0
fi

wasm_build_env
say "building the Worker (worker-build --release)"
worker-build --release
touch "$stamp"
