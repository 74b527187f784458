#!/usr/bin/env bash
# Builds the CUDA build (build-cuda/, sm_90a) here and packs what the GPU machine needs into
# .devpkg/gpu.tar.xz (binaries stripped, their non-system libraries bundled): the GPU machine has
# no grpc/spdlog/yaml-cpp/OpenBLAS, and a call carries at most 64 MiB.
# Usage: scripts/device/pack.sh [extra binaries in build-cuda/bin ...]
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
tar -C .devpkg -cf - pkg | xz -T2 -6 > .devpkg/gpu.tar.xz
rm -rf .devpkg/pkg
ls -la .devpkg/gpu.tar.xz
