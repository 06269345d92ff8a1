# Sourced by `scripts/setup.sh --tests`: what the test suite needs beyond the build.

# rustfmt and clippy for the lints (rustup's minimal profile lacks them).
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done

# Clippy for the wasm32-only edge code, from the same toolchain that builds it (with
# rustup, that is the clippy above).
if [ "$(wasm_toolchain_mode)" = debian ]; then apt_install rust-web-clippy; fi

# Headless Chromium for the demo page's browser test (Debian's; playwright-core drives it).
[ -x /usr/bin/chromium ] || apt_install chromium

# schemathesis for the API-document test, in .venv. CPython before 3.11.8/3.12.1 has an AST
# bug that hypothesis trips over, so take the newest Python 3.12+ the machine has (pyenv's
# included), else the system's (the test then skips schemathesis' coverage phase, and says so).
if command -v dpkg-query >/dev/null 2>&1; then apt_install python3 python3-venv; fi
SCHEMATHESIS_VERSION=4.32.5
pick_python() {
  local candidates=(python3.14 python3.13 python3.12)
  if command -v pyenv >/dev/null 2>&1; then
    candidates+=($(ls -d "$(pyenv root)"/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV))
  fi
  for candidate in "${candidates[@]}" python3; do
    if "$candidate" -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 10)' >/dev/null 2>&1; then
      if [ "$candidate" = python3 ] || "$candidate" -c 'import sys; assert sys.version_info >= (3, 12)' >/dev/null 2>&1; then
        echo "$candidate"
        return
      fi
    fi
  done
}
if ! .venv/bin/schemathesis --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  python="$(pick_python)"
  say "installing schemathesis $SCHEMATHESIS_VERSION into .venv ($("$python" --version))"
  rm -rf .venv
  "$python" -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# The PyPI Python Kling client `klingai-api`, for its end-to-end test, into the same .venv.
# It declares Python >= 3.14 but runs on 3.11+; of its dependencies, its API client needs
# only PyJWT and requests-toolbelt (the others serve its CLI and MCP server).
KLINGAI_API_VERSION=0.1.0
if [ "$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("klingai-api"))' 2>/dev/null)" != "$KLINGAI_API_VERSION" ]; then
  say "installing the Python Kling client klingai-api $KLINGAI_API_VERSION into .venv"
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps --ignore-requires-python "klingai-api==$KLINGAI_API_VERSION"
  .venv/bin/pip install --quiet --disable-pip-version-check "pyjwt>=2.8" "requests-toolbelt>=1.0.0"
fi
