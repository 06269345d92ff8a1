# Sourced by `scripts/setup.sh --tests`: what the test suite needs beyond the build.

# Clippy for the wasm32-only edge code, from the same toolchain that builds it.
case "$(wasm_toolchain_mode)" in
  debian) apt_install rust-web-clippy ;;
  rustup) rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy ;;
esac
