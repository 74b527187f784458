#!/usr/bin/env bash
# On the GPU machine: unpacks .devpkg/gpu.tar.xz (scripts/device/pack.sh) and runs, in one go, the
# GPU test suite (tests + compute-sanitizer), then the benchmarks named in $BENCH (gemm, attention,
# attention-quick, engine, engine-dummy), then, when the package holds a model (pack.sh's MODEL_BLOCKS), the server end to
# end on both backends (serve-check.py). Logs go to $OUT (the device tool brings them back).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
OUT=${OUT:-/tmp/gpu-out}
rm -rf /tmp/gpu/pkg  # never a package left from an earlier call
mkdir -p "$OUT" /tmp/gpu && tar -xJf .devpkg/gpu.tar.xz -C /tmp/gpu || { echo "gpu-run: cannot unpack .devpkg/gpu.tar.xz (carry .devpkg)" >&2; exit 2; }
P=/tmp/gpu/pkg
export LD_LIBRARY_PATH="$P/bundle:/usr/local/cuda/lib64"
status=0
if [[ ${SUITE:-1} == 1 ]]; then
  OUT=$OUT bash scripts/gpu-suite.sh "$P" 2>&1 | tee "$OUT/gpu-suite.txt" | tail -25 || status=1
  # Keep what comes back small: the sanitizer findings by kernel and source line.
  for tool in racecheck synccheck memcheck; do
    [[ -f $OUT/$tool.log ]] || continue
    grep -E "(Race|Error|Barrier|Invalid).*|in .*\(|at .*\.cu:[0-9]+" "$OUT/$tool.log" | sed 's/0x[0-9a-f]*/0x./g' |
      sort | uniq -c | sort -rn | head -60 > "$OUT/$tool-summary.txt"
    rm -f "$OUT/$tool.log"
  done
fi
for b in ${BENCH:-}; do
  case $b in
    gemm) python3 bench/gemm_peer.py --ours "$P/bin/gemm_bench" > "$OUT/gemm.txt" 2>&1 || status=1; tail -20 "$OUT/gemm.txt" ;;
    attention) python3 bench/attention_bench.py --bin "$P/bin/attention_bench" --out "$OUT" > "$OUT/attention.txt" 2>&1 || status=1; tail -30 "$OUT/attention.txt" ;;
    attention-quick) python3 bench/attention_bench.py --quick --bin "$P/bin/attention_bench" --out "$OUT" > "$OUT/attention.txt" 2>&1 || status=1; tail -30 "$OUT/attention.txt" ;;
    engine)  # needs the packed model (MODEL_BLOCKS), engine_bench and sparseserve
      xz -dc .devpkg/model.gguf.xz > /tmp/gpu/smollm2-cut.gguf &&
        cut_yaml=$(python3 scripts/device/model_cut.py --blocks "$("$P/bin/sparseserve" info --model /tmp/gpu/smollm2-cut.gguf --json |
          python3 -c 'import json,sys; print(json.load(sys.stdin)["layers"])')" --out /tmp/gpu) &&
        PYTHONPATH="$P/python${PYTHONPATH:+:$PYTHONPATH}" python3 bench/engine_bench.py --bin "$P/bin/engine_bench" \
          --model /tmp/gpu/smollm2-cut.gguf --model-config "$cut_yaml" --profiles dense,balanced --out "$OUT" \
          ${ENGINE_BENCH_ARGS:-} > "$OUT/engine.txt" 2>&1 || status=1
      tail -30 "$OUT/engine.txt" ;;
    engine-dummy)  # needs a directory packed by pack.sh's DUMMY=NAME (default llama-3-8b), dense profile
      PYTHONPATH="$P/python${PYTHONPATH:+:$PYTHONPATH}" python3 bench/engine_bench.py --bin "$P/bin/engine_bench" \
        --model ".devpkg/${DUMMY:-llama-3-8b}" --load-format dummy --kv-cache-bytes 40GiB --out "$OUT" \
        ${ENGINE_BENCH_ARGS:-} > "$OUT/engine-dummy.txt" 2>&1 || status=1
      tail -30 "$OUT/engine-dummy.txt" ;;
    *) echo "gpu-run: unknown benchmark '$b'" >&2; status=1 ;;
  esac
done
if [[ -f .devpkg/model.gguf.xz && ${SERVE_CHECK:-1} == 1 ]]; then
  # The model name must not match configs/models/*.yaml (those profiles are for all 30 blocks).
  if xz -dc .devpkg/model.gguf.xz > /tmp/gpu/smollm2-cut.gguf; then
    python3 scripts/device/serve-check.py --bin "$P/bin/sparseserve" --model /tmp/gpu/smollm2-cut.gguf --out "$OUT" \
      > "$OUT/serve-check.txt" 2>&1 || status=1
    tail -40 "$OUT/serve-check.txt"
  else
    echo "gpu-run: cannot unpack .devpkg/model.gguf.xz" >&2
    status=1
  fi
fi
exit $status
