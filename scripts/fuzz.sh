#!/usr/bin/env bash
# Fuzzes the request validation, callback and browser-token code with cargo-fuzz
# (libFuzzer + AddressSanitizer), and prints each target's final figures.
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 600 s, every target)
# Seeds come from fuzz/seeds/<target>; what libFuzzer finds grows fuzz/corpus/<target>
# (not committed); a crash is saved under fuzz/artifacts/<target> and fails the run.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$PROJECT_ROOT"
export PATH="$CARGO_BIN:$PATH"

seconds=${1:-600}
shift || true
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --quiet --locked cargo-fuzz || cargo install --quiet cargo-fuzz
# cargo-fuzz passes -Z flags (sanitizers); this lets a stable toolchain accept them.
export RUSTC_BOOTSTRAP=1

cd fuzz
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
for target in "${targets[@]}"; do
  say "fuzzing $target for ${seconds}s"
  mkdir -p "corpus/$target" "../target/fuzz-logs"
  log="../target/fuzz-logs/$target.log"
  if ! cargo fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
      -max_total_time="$seconds" -print_final_stats=1 -timeout=10 >"$log" 2>&1; then
    tail -40 "$log"
    say "$target FAILED: see $log and fuzz/artifacts/$target"
    exit 1
  fi
  grep -E '^#[0-9]+[[:space:]]+DONE|^stat::number_of_executed_units|^stat::average_exec_per_sec|^stat::peak_rss_mb' "$log" || true
  echo "corpus: $(ls "corpus/$target" | wc -l) inputs"
done
