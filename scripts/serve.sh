#!/usr/bin/env bash
# Set-up, model fetch, build, then the server: OpenAI HTTP on :8000 and gRPC on :50051 with the
# default model (configs/server.yaml). Extra arguments go to `sparseserve serve` (e.g. --http-port);
# relative paths given to --model, --model-config and --config are taken from the caller's folder.
set -euo pipefail
caller=$PWD
args=()
path_flag=""
for a in "$@"; do
  if [ -n "$path_flag" ]; then
    [[ -z $a || $a == /* ]] || a="$caller/$a"
    path_flag=""
  else
    case $a in
      --model | --model-config | --config) path_flag=1 ;;
      --model=[!/]* | --model-config=[!/]* | --config=[!/]*) a="${a%%=*}=$caller/${a#*=}" ;;
    esac
  fi
  args+=("$a")
done
cd "$(dirname "$0")/.."
export SPARSESERVE_BUILD=${SPARSESERVE_BUILD:-build}
bash scripts/setup.sh
bash scripts/fetch-model.sh
bash scripts/build.sh
exec "$SPARSESERVE_BUILD/bin/sparseserve" serve --config configs/server.yaml ${args[@]+"${args[@]}"}
