#!/usr/bin/env bash
# Fuzzes the GGUF reader with libFuzzer (AddressSanitizer + UndefinedBehaviorSanitizer).
#   scripts/fuzz.sh [seconds]      default 600
# Builds bin/gguf_fuzzer with clang in build-fuzz/, seeds the corpus from tests/fuzz/seeds/ and
# tests/fuzz/regressions/, and runs one job for the given time. The working corpus grows in
# build-fuzz/fuzz-corpus/; a crashing input is written to build-fuzz/fuzz-artifacts/ and the run
# stops: fix the reader, copy the input to tests/fuzz/regressions/, and run again.
# The job's log is build-fuzz/fuzz-0.log (libFuzzer's -jobs mode); its tail is printed at the end.
set -euo pipefail

seconds="${1:-600}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${root}/build-fuzz"
sanitize="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined"

CC=clang CXX=clang++ cmake -S "${root}" -B "${build}" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPARSESERVE_CUDA=OFF -DSPARSESERVE_FUZZ=ON \
  -DSPARSESERVE_BENCH=OFF -DCMAKE_CXX_FLAGS="${sanitize}" -DCMAKE_C_FLAGS="${sanitize}" >/dev/null
ninja -C "${build}" -j2 gguf_fuzzer

corpus="${build}/fuzz-corpus"
artifacts="${build}/fuzz-artifacts"
mkdir -p "${corpus}" "${artifacts}"

cd "${build}"
status=0
./bin/gguf_fuzzer -max_len=65536 -max_total_time="${seconds}" -jobs=1 -workers=1 \
  -print_final_stats=1 -artifact_prefix="${artifacts}/" \
  "${corpus}" "${root}/tests/fuzz/seeds" "${root}/tests/fuzz/regressions" || status=$?
tail -n 25 "${build}/fuzz-0.log" || true
if compgen -G "${artifacts}/crash-*" >/dev/null || compgen -G "${artifacts}/leak-*" >/dev/null ||
   compgen -G "${artifacts}/timeout-*" >/dev/null || compgen -G "${artifacts}/oom-*" >/dev/null; then
  echo "fuzz: findings in ${artifacts}:" && ls -l "${artifacts}"
fi
exit "${status}"
