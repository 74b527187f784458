#!/usr/bin/env bash
# Prints the Debian packages that hold the shared libraries the given binaries load (ldd), one per
# line, sorted: what the runtime image installs. Fails when a library has no owning package (a
# library from outside Debian's packages could not be installed in the runtime image).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: docker/runtime-packages.sh BINARY..." >&2; exit 2; }

owner() {  # the package owning a library path; dpkg knows /usr-merged files by either spelling
  local path=$1 alt
  case $path in
    /usr/*) alt=${path#/usr} ;;
    *) alt=/usr$path ;;
  esac
  { dpkg -S "$path" 2>/dev/null || dpkg -S "$alt" 2>/dev/null || dpkg -S "$(readlink -f "$path")" 2>/dev/null; } |
    head -1 | cut -d: -f1
}

for bin in "$@"; do
  ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
done | sort -u | while read -r lib; do
  pkg=$(owner "$lib") || pkg=""
  [ -n "$pkg" ] || { echo "runtime-packages: no Debian package holds $lib" >&2; exit 1; }
  echo "$pkg"
done | sort -u
