# Shared by the project's scripts (sourced, not run): the toolchain the wasm build uses.
#
# Two ways to get a wasm32 standard library, decided by what the machine has:
# - rustup: the ordinary `rustup target add wasm32-unknown-unknown`;
# - debian: where rustup cannot download it, Debian's rustc-web (a newer rustc with wasm32
#   built in) plus its std sources, and cargo's build-std (README: "Building without
#   rustup's wasm32 target").

PROJECT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Where `cargo install` puts binaries.
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
WASM_TARGET=wasm32-unknown-unknown
DEBIAN_WASM_PACKAGES=(rustc-web cargo-web rust-web-src lld-22)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# The version Cargo.lock pins for a package.
locked_version() {
  awk -v name="$1" '$0 == "name = \"" name "\"" { getline; gsub(/"/, "", $3); print $3; exit }' \
    "$PROJECT_ROOT/Cargo.lock"
}

rustup_has_wasm_target() {
  command -v rustup >/dev/null 2>&1 &&
    rustup target list --installed 2>/dev/null | grep -qx "$WASM_TARGET"
}

debian_wasm_toolchain_ready() {
  [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] && command -v rust-lld >/dev/null 2>&1 &&
    [ -d /usr/lib/rustlib/src/rust/library ] &&
    /usr/bin/rustc --print target-list 2>/dev/null | grep -qx "$WASM_TARGET"
}

# Prints rustup, debian, or nothing when neither is ready.
wasm_toolchain_mode() {
  if rustup_has_wasm_target; then echo rustup
  elif debian_wasm_toolchain_ready; then echo debian
  fi
}

# Exports what a wasm build (worker-build, or cargo --target wasm32) needs.
wasm_build_env() {
  export PATH="$PROJECT_ROOT/node_modules/.bin:$CARGO_BIN:$PATH"
  case "$(wasm_toolchain_mode)" in
    rustup) ;;
    debian)
      # worker-build runs plain `rustc` and `cargo`: put Debian's first, so that one
      # toolchain compiles std and the worker alike.
      local shim="$PROJECT_ROOT/target/debian-toolchain/bin"
      mkdir -p "$shim"
      ln -sf /usr/bin/rustc "$shim/rustc"
      ln -sf /usr/bin/rustdoc "$shim/rustdoc"
      ln -sf /usr/bin/cargo "$shim/cargo"
      # Clippy for wasm32 (rust-web-clippy, installed for the tests) must match that rustc.
      [ -x /usr/bin/clippy-driver ] && ln -sf /usr/bin/clippy-driver "$shim/clippy-driver"
      [ -x /usr/bin/cargo-clippy ] && ln -sf /usr/bin/cargo-clippy "$shim/cargo-clippy"
      export PATH="$shim:$PATH"
      export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
      export CARGO_UNSTABLE_BUILD_STD=std,panic_abort
      ;;
    *)
      say "no wasm32 toolchain: run 'make setup' first" && return 1 ;;
  esac
  # worker-build would download these; use the ones setup installed.
  export WASM_BINDGEN_BIN="$CARGO_BIN/wasm-bindgen"
  export WASM_OPT_BIN="$PROJECT_ROOT/node_modules/.bin/wasm-opt"
  export ESBUILD_BIN="$PROJECT_ROOT/node_modules/.bin/esbuild"
}
