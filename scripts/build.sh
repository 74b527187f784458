#!/usr/bin/env bash
# Configures and builds into build/ (Release, CUDA=AUTO unless SPARSESERVE_CUDA is set). Extra
# arguments go to cmake's configure step.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${SPARSESERVE_BUILD:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" \
  -DSPARSESERVE_CUDA="${SPARSESERVE_CUDA:-AUTO}" "$@" >/dev/null
ninja -C "$BUILD_DIR" -j"${JOBS:-$(nproc)}"
