#!/usr/bin/env bash
# Builds the CUDA build (build-cuda/, sm_90a) here and packs what the GPU machine needs into
# .devpkg/gpu.tar.xz (binaries stripped, their non-system libraries bundled): the GPU machine has
# no grpc/spdlog/yaml-cpp/OpenBLAS, and a call carries at most 64 MiB.
# Usage: scripts/device/pack.sh [extra binaries in build-cuda/bin ...]
#   MODEL_BLOCKS=N: also pack the default model cut to its first N blocks (truncate-gguf.py) as
#   .devpkg/model.gguf.xz, for scripts/device/serve-check.py (the whole model is over 64 MiB).
#   DUMMY=NAME: also pack bench/models/NAME/config.json (and its profile YAML and head pattern, if
#   any) with a tokenizer.json (the default model's) as .devpkg/NAME/, a directory `--load-format
#   dummy` loads (gpu-run.sh's BENCH=engine-dummy).
set -euo pipefail
cd "$(dirname "$0")/../.."
B=build-cuda
cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPARSESERVE_CUDA=ON >/dev/null
ninja -C "$B" -j"$(nproc)" gpu_tests "$@"
rm -rf .devpkg && mkdir -p .devpkg/pkg/bin
for b in gpu_tests "$@"; do cp "$B/bin/$b" .devpkg/pkg/bin/ && strip .devpkg/pkg/bin/"$b"; done
# bundle-libs.sh fails on a binary that needs no bundled library (its grep finds nothing): bundle
# one binary at a time and accept that case.
BUNDLE=../shared/tools/bundle-libs.sh  # the workplace's tool, next to the repository
[ -f "$BUNDLE" ] || { echo "pack: $BUNDLE not found (it bundles the binaries' libraries)" >&2; exit 1; }
for b in .devpkg/pkg/bin/*; do bash "$BUNDLE" .devpkg/pkg/bundle "$b" >/dev/null || true; done
du -sh .devpkg/pkg/bundle
# The gguf package (pure Python) for bench/engine_bench.py's peer: transformers reads GGUF with it and
# the GPU machine's Python lacks it.
gguf_py=$(ls -d .venv/lib/python3*/site-packages/gguf 2>/dev/null | head -1)
if [[ -n $gguf_py ]]; then
  mkdir -p .devpkg/pkg/python && cp -r "$gguf_py" "$(dirname "$gguf_py")"/gguf-*.dist-info .devpkg/pkg/python/  # transformers checks its version
fi
tar -C .devpkg -cf - pkg | xz -T2 -6 > .devpkg/gpu.tar.xz
rm -rf .devpkg/pkg
if [[ -n ${MODEL_BLOCKS:-} ]]; then
  .venv/bin/python scripts/device/truncate-gguf.py models/SmolLM2-135M-Instruct.Q4_1.gguf .devpkg/model.gguf \
    --blocks "$MODEL_BLOCKS"
  xz -T2 -3 .devpkg/model.gguf
fi
if [[ -n ${DUMMY:-} ]]; then
  mkdir -p ".devpkg/$DUMMY" && cp "bench/models/$DUMMY/config.json" ".devpkg/$DUMMY/"
  for f in "bench/models/$DUMMY"/*.yaml "bench/models/$DUMMY"/*.tsv; do
    if [[ -f $f ]]; then cp "$f" ".devpkg/$DUMMY/"; fi  # sparsity profiles (engine_bench --model-config)
  done
  (cd tests/python && ../../.venv/bin/python -c "import sys; from gguf_tokenizer_json import build_tokenizer_json; \
    open(sys.argv[1], 'w').write(build_tokenizer_json('../../models/SmolLM2-135M-Instruct.Q4_1.gguf'))" \
    "../../.devpkg/$DUMMY/tokenizer.json")
fi
ls -la .devpkg/
