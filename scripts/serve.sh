#!/usr/bin/env bash
# Set-up, model fetch, build, then the main job. Until the HTTP/gRPC server lands this answers a
# sample chat prompt with `sparseserve generate`; extra arguments go to that command.
set -euo pipefail
cd "$(dirname "$0")/.."
export SPARSESERVE_BUILD=${SPARSESERVE_BUILD:-build}
bash scripts/setup.sh
bash scripts/fetch-model.sh
bash scripts/build.sh
exec "$SPARSESERVE_BUILD/bin/sparseserve" generate --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
  --chat "${PROMPT:-What are three good reasons to learn to cook at home?}" --max-tokens 200 --stats "$@"
