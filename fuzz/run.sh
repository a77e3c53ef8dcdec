#!/usr/bin/env bash
# The long fuzz runs of src/fuzz.rs (issue 12): each parser gets HERD_FUZZ_N seeded inputs
# (default 10 million) in a release build, every output checked against its properties.
# Prints inputs/s, the count and the kinds of input reached per target; exits non-zero if
# any input failed, and prints how to regenerate it.
#
#   fuzz/run.sh                                  # all four targets, 10M inputs each
#   fuzz/run.sh herd_yml places_json             # some of them
#   HERD_FUZZ_N=1000000 HERD_FUZZ_SEED=7 fuzz/run.sh
#   HERD_FUZZ_SEED=1 HERD_FUZZ_FROM=114688 HERD_FUZZ_N=8769 fuzz/run.sh client_lines  # replay a failure
#
# Bounded: a target stops after HERD_FUZZ_SECS (default 900) even if short of its count
# (the count reached is printed), and is killed 120 s after that. HERD_FUZZ_THREADS
# (default: all cores) splits a target's inputs; the inputs do not depend on it.
set -euo pipefail
cd "$(dirname "$0")/.."
export HERD_FUZZ_N=${HERD_FUZZ_N:-10000000}
export HERD_FUZZ_SEED=${HERD_FUZZ_SEED:-1}
export HERD_FUZZ_SECS=${HERD_FUZZ_SECS:-900}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(client_lines peer_records herd_yml places_json)
fi
cargo test --release --bin herd --no-run 2>&1 | tail -1 >&2
failed=()
for t in "${targets[@]}"; do
  echo "== fuzz $t: $HERD_FUZZ_N inputs, seed $HERD_FUZZ_SEED, at most $HERD_FUZZ_SECS s" >&2
  if ! timeout --signal=KILL $((HERD_FUZZ_SECS + 120)) \
    cargo test --release --bin herd -q -- --exact "fuzz::$t" --ignored --nocapture --test-threads=1 \
    | grep -v -e '^running ' -e '^test result' -e '^$'; then
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz/run.sh: failed: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz/run.sh: all targets passed" >&2
