#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) each with cargo-fuzz (needs the nightly
# toolchain; installs cargo-fuzz when missing). Crashes land in fuzz/artifacts/<target>/ and
# the script exits non-zero if any target found one. TARGETS="a b" runs only those.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${SECONDS:-60}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
status=0
for target in ${TARGETS:-$(cargo +nightly fuzz list)}; do
  echo "== $target: ${SECONDS_EACH}s"
  # Committed seeds (e.g. requests carrying the KEY placeholder) start the corpus.
  if [ -d "seeds/$target" ]; then
    mkdir -p "corpus/$target" && cp -n seeds/"$target"/* "corpus/$target/"
  fi
  if ! cargo +nightly fuzz run "$target" -- -max_total_time="$SECONDS_EACH" -max_len=4096 2>&1 | grep -E "^Done|panicked|ERROR|SUMMARY|Test unit written"; then
    status=1
  fi
done
exit $status
