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
# The `name` section (function names) is about a tenth of the gzipped module; a panic is
# still logged with its file, line and message by the panic hook (src/edge/mod.rs).
# worker-build keeps the section, so it is stripped here, with the features worker-build
# enables (so that no newer encoding is written than workerd reads).
features=()
for feature in mutable-globals sign-ext nontrapping-float-to-int bulk-memory multivalue \
               reference-types exception-handling; do
  features+=("--enable-$feature")
done
# The module with its names is kept beside the build, to read a stack trace's offsets by.
mkdir -p target/wasm-names
cp build/index_bg.wasm target/wasm-names/index_bg.wasm
"$WASM_OPT_BIN" "${features[@]}" --strip-debug --strip-producers build/index_bg.wasm -o build/index_bg.wasm
touch "$stamp"
