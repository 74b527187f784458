#!/usr/bin/env bash
# Set-up, model fetch, build, then the server: OpenAI HTTP on :8000 and gRPC on :50051 with the
# default model (configs/server.yaml). Extra arguments go to `sparseserve serve` (e.g. --http-port).
set -euo pipefail
cd "$(dirname "$0")/.."
export SPARSESERVE_BUILD=${SPARSESERVE_BUILD:-build}
bash scripts/setup.sh
bash scripts/fetch-model.sh
bash scripts/build.sh
exec "$SPARSESERVE_BUILD/bin/sparseserve" serve --config configs/server.yaml "$@"
