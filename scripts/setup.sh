#!/usr/bin/env bash
# Installs whatever the project needs and is missing; skips what is there, so it is cheap
# to run before every `make dev` and `make test`.
#   scripts/setup.sh          the toolchain to build and run the worker
#   scripts/setup.sh --tests  also what the test suite needs
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$PROJECT_ROOT"

for_tests=false
for_bench=false
[ "${1:-}" = "--tests" ] && for_tests=true
[ "${1:-}" = "--bench" ] && for_bench=true

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  if ! command -v dpkg-query >/dev/null 2>&1; then
    say "not a Debian system: install $* yourself"
    return 1
  fi
  local missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_rust() {
  export PATH="$CARGO_BIN:$PATH"
  if ! command -v cargo >/dev/null 2>&1; then
    say "cargo is missing: install Rust (https://rustup.rs) and run this again"
    exit 1
  fi
}

ensure_wasm_target() {
  [ -n "$(wasm_toolchain_mode)" ] && return 0
  if command -v rustup >/dev/null 2>&1 &&
     curl -sSfI --max-time 8 https://static.rust-lang.org/rustup/release-stable.toml >/dev/null 2>&1; then
    say "adding the $WASM_TARGET target with rustup"
    timeout 300 rustup target add "$WASM_TARGET" && return 0
    say "rustup could not add the target; falling back to Debian's wasm32 toolchain"
  fi
  apt_install "${DEBIAN_WASM_PACKAGES[@]}"
  if ! debian_wasm_toolchain_ready; then
    say "Debian's wasm32 toolchain is incomplete (need ${DEBIAN_WASM_PACKAGES[*]})"
    exit 1
  fi
}

debian_target_marker() {
  # worker-build insists that `rustc --print target-libdir` exists; with build-std the
  # directory stays empty (std is compiled into target/ instead).
  [ "$(wasm_toolchain_mode)" = debian ] || return 0
  local libdir
  libdir="$(/usr/bin/rustc --target "$WASM_TARGET" --print target-libdir)"
  [ -d "$libdir" ] || as_root mkdir -p "$libdir"
}

# `cargo install` of worker-build and wasm-bindgen-cli compiles C (zstd, bzip2) and links
# OpenSSL: on Debian, make sure a C toolchain, pkg-config and OpenSSL's headers are there.
ensure_build_dependencies() {
  command -v dpkg-query >/dev/null 2>&1 || return 0
  apt_install build-essential pkg-config libssl-dev
}

# ensure_cargo_tool CRATE BINARY VERSION
ensure_cargo_tool() {
  local crate=$1 binary=$2 version=$3 installed
  installed="$("$CARGO_BIN/$binary" --version 2>/dev/null | awk '{print $NF}' || true)"
  [ "$installed" = "$version" ] && return 0
  say "installing $crate $version (a few minutes the first time)"
  cargo install --quiet --locked "$crate" --version "=$version" ||
    cargo install --quiet "$crate" --version "=$version"
}

ensure_npm_packages() {
  local stamp=node_modules/.kling-edge-lock-sha
  local want
  want="$( (sha256sum package-lock.json 2>/dev/null || shasum -a 256 package-lock.json) | cut -d' ' -f1)"
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && return 0
  say "installing npm packages (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" >"$stamp"
}

ensure_rust
ensure_wasm_target
debian_target_marker
ensure_build_dependencies
ensure_cargo_tool worker-build worker-build "$(locked_version worker)"
ensure_cargo_tool wasm-bindgen-cli wasm-bindgen "$(locked_version wasm-bindgen)"
ensure_npm_packages
if $for_tests; then
  . scripts/setup-tests.sh
fi
if $for_bench; then
  # The benchmark's upstream (nginx) and load generator (wrk).
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || apt_install nginx-light
  command -v wrk >/dev/null 2>&1 || apt_install wrk
fi
say "setup complete ($(wasm_toolchain_mode) wasm32 toolchain)"
