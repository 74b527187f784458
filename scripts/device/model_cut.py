#!/usr/bin/env python3
"""The shipped model YAML (configs/models/smollm2-135m-instruct.yaml) for the default model cut to its
first N blocks (scripts/device/truncate-gguf.py): the same profiles, the head pattern cut to N
layers (one TSV line each). Run from the repository root.

Usage: model_cut.py --blocks N --out DIR    (prints the new YAML's path)
"""
import argparse
import os
import re

SHIPPED_YAML = "configs/models/smollm2-135m-instruct.yaml"


def cut_model_config(blocks, out):
    folder = os.path.dirname(SHIPPED_YAML)
    text = open(SHIPPED_YAML).read()
    tsv_name = re.search(r"pattern: (\S+?)[,}\s]", text).group(1)
    lines = open(os.path.join(folder, tsv_name)).read().splitlines()[:blocks]
    tsv = os.path.join(os.path.abspath(out), "heads-cut.tsv")
    open(tsv, "w").write("\n".join(lines) + "\n")
    path = os.path.join(os.path.abspath(out), "model-cut.yaml")
    open(path, "w").write(text.replace(f"pattern: {tsv_name}", f"pattern: {tsv}"))
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    print(cut_model_config(a.blocks, a.out))
