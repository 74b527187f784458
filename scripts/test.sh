#!/usr/bin/env bash
# Set-up, model fetch, build, then every test: ctest (unit tests) and pytest (tests/python: the
# independent references — numpy forward pass, gguf dequantizer, HF tokenizers — and the HF path).
# Exits non-zero on any failure; the last line is the combined summary.
set -uo pipefail
cd "$(dirname "$0")/.."
export SPARSESERVE_BUILD=${SPARSESERVE_BUILD:-build}
# Tests run side by side on few cores: OpenMP threads must sleep, not spin, while they wait.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

bash scripts/setup.sh || exit 1
bash scripts/fetch-model.sh || exit 1
bash scripts/build.sh || exit 1

status=0
ctest_log=$(mktemp)
pytest_log=$(mktemp)
trap 'rm -f "$ctest_log" "$pytest_log"' EXIT
(cd "$SPARSESERVE_BUILD" && ctest --output-on-failure -j"$(nproc)" -LE gpu) 2>&1 | tee "$ctest_log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

SPARSESERVE_BUILD=$(realpath "$SPARSESERVE_BUILD") .venv/bin/python -m pytest -q -p no:cacheprovider tests/python 2>&1 | tee "$pytest_log"
rc=${PIPESTATUS[0]}
[ "$rc" = 0 ] || status=1  # 5: no test collected, a failure too

# Combined summary: ctest "N% tests passed, F tests failed out of T"; pytest "... P passed, S skipped ...".
ct_total=$(grep -oE 'tests failed out of [0-9]+' "$ctest_log" | grep -oE '[0-9]+$' || echo 0)
ct_failed=$(grep -oE '[0-9]+ tests failed out of' "$ctest_log" | grep -oE '^[0-9]+' || echo 0)
ct_skipped=$(grep -cE '\*\*\*(Skipped|Not Run)' "$ctest_log" || true)
py_line=$(grep -E '(passed|failed|error|skipped|no tests ran)' "$pytest_log" | tail -1)
num() { echo "$py_line" | grep -oE "[0-9]+ $1" | grep -oE '^[0-9]+' || echo 0; }
py_passed=$(num passed); py_failed=$(( $(num failed) + $(num error) )); py_skipped=$(num skipped)
passed=$(( ct_total - ct_failed - ct_skipped + py_passed ))
failed=$(( ct_failed + py_failed ))
[ "$failed" = 0 ] || status=1
[ "$ct_total" -gt 0 ] || { echo "test.sh: ctest ran no test" >&2; status=1; }
echo "tests: $passed passed, $failed failed, $(( ct_skipped + py_skipped )) skipped"
exit $status
