#!/usr/bin/env bash
# GPU test suite, for the GPU machine (builds nothing there). Runs, from a build folder carried along:
#   1. gpu_tests, every test;
#   2. compute-sanitizer memcheck (out-of-bounds / misaligned accesses, leaks) on the short tests;
#   3. compute-sanitizer racecheck (shared-memory races) on the short tests;
#   4. compute-sanitizer synccheck (barrier misuse) on the short tests;
# then prints one summary table. Exit status 0 only when every stage passed.
#
# Usage: scripts/gpu-suite.sh [BUILD_DIR]            (default: build-cuda)
#   BUILD_DIR/bin/gpu_tests must exist; BUILD_DIR/bundle (../shared/tools/bundle-libs.sh) holds the
#   non-system libraries it needs.
# Environment:
#   SANITIZER_FILTER  gtest filter for the sanitizer stages (default: '*Small*:*ShapeCheck*'; name a
#                     test "...Small..." to include it: it should run in seconds, not minutes)
#   GPU_TESTS_FILTER  gtest filter for stage 1 (default: all)
#   OUT               where logs go (default: BUILD_DIR/gpu-suite-logs); full logs are kept there.
set -uo pipefail

build=${1:-build-cuda}
bin=$build/bin/gpu_tests
if [[ ! -x $bin ]]; then
  echo "gpu-suite: $bin not found (build it with: ninja -C $build gpu_tests)" >&2
  exit 2
fi
export LD_LIBRARY_PATH="$build/bundle:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
logs=${OUT:-$build/gpu-suite-logs}
mkdir -p "$logs"
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
san_filter=${SANITIZER_FILTER:-'*Small*:*ShapeCheck*'}
# racecheck leaves out the GEMM tests and the forward pass and engine (which run their GEMMs through
# cuBLASLt):
# the hazards it reports there are inside cuBLASLt's own kernels (nvjet_sm90_*_splitK,
# warp-specialised TMA code racecheck does not model), not ours.
race_filter=${RACECHECK_FILTER:-"${san_filter}:-Gemm*:CudaForward*:CudaEngine*"}
all_filter=${GPU_TESTS_FILTER:-'*'}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/# GPU: /'

declare -a names statuses details
overall=0

# run_stage NAME LOG COMMAND...: runs the command, keeps its log, records status and a one-line detail.
run_stage() {
  local name=$1 log=$2
  shift 2
  local t0=$SECONDS
  echo "== $name: $*"
  "$@" >"$log" 2>&1
  local rc=$?
  local passed failed skipped errors detail
  passed=$(grep -oE '^\[  PASSED  \] [0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
  failed=$(grep -oE '^\[  FAILED  \] [0-9]+ test' "$log" | grep -oE '[0-9]+' | tail -1)
  skipped=$(grep -oE '^\[  SKIPPED \] [0-9]+ test' "$log" | grep -oE '[0-9]+' | tail -1)
  errors=$(grep -oE 'ERROR SUMMARY: [0-9]+ error' "$log" | grep -oE '[0-9]+' | tail -1)
  detail="passed ${passed:-0}, failed ${failed:-0}, skipped ${skipped:-0}"
  [[ -n $errors ]] && detail+=", sanitizer errors $errors"
  detail+=", $((SECONDS - t0)) s"
  names+=("$name")
  details+=("$detail")
  if [[ $rc -eq 0 ]]; then
    statuses+=("PASS")
  else
    statuses+=("FAIL (rc $rc)")
    overall=1
    # Each failure with the lines after it: the values compared and the SCOPED_TRACE lines, which
    # name the seed (SPARSESERVE_TEST_SEED=...) that reproduces a random case.
    grep -E -A8 '^/.*Failure' "$log" | head -60
    grep -E '^\[  FAILED  \]|ERROR SUMMARY|Invalid|Race reported|Barrier error' "$log" | head -20
  fi
  tail -3 "$log"
}

run_stage gpu_tests "$logs/gpu_tests.log" \
  "$bin" --gtest_filter="$all_filter" --gtest_output="xml:$logs/gpu_tests.xml"
run_stage memcheck "$logs/memcheck.log" \
  "$sanitizer" --tool memcheck --leak-check full --error-exitcode 99 "$bin" --gtest_filter="$san_filter"
run_stage racecheck "$logs/racecheck.log" \
  "$sanitizer" --tool racecheck --racecheck-report hazard --error-exitcode 99 "$bin" --gtest_filter="$race_filter"
run_stage synccheck "$logs/synccheck.log" \
  "$sanitizer" --tool synccheck --error-exitcode 99 "$bin" --gtest_filter="$san_filter"

echo
echo "gpu-suite summary (logs in $logs; sanitizer filter '$san_filter')"
printf '%-10s %-14s %s\n' stage status detail
for i in "${!names[@]}"; do printf '%-10s %-14s %s\n' "${names[$i]}" "${statuses[$i]}" "${details[$i]}"; done
exit $overall
