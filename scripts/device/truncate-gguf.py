#!/usr/bin/env python3
"""Writes a copy of a Llama-family GGUF that keeps only its first N transformer blocks (metadata,
tokenizer, embeddings and output head unchanged, block_count set to N).

Why: a device call carries at most 64 MiB, and the default model (93 MB) does not fit; its first
blocks do. The truncated model is a real model to the server (same tokenizer, chat template, shapes)
whose outputs both backends must agree on; it is not meant to write good text.

Usage: scripts/device/truncate-gguf.py IN.gguf OUT.gguf --blocks N   (needs the test venv's gguf)
"""
import argparse
import re
import sys

import gguf


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--blocks", type=int, required=True)
    a = ap.parse_args()
    r = gguf.GGUFReader(a.src)
    arch = r.fields["general.architecture"].contents()
    count_key = f"{arch}.block_count"
    have = int(r.fields[count_key].contents())
    if not 1 <= a.blocks <= have:
        print(f"truncate-gguf: --blocks must be in 1..{have}", file=sys.stderr)
        return 2
    w = gguf.GGUFWriter(a.dst, arch)
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = a.blocks if key == count_key else field.contents()
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, value, vtype, sub_type=sub)
    block = re.compile(r"^blk\.(\d+)\.")
    kept = 0
    for t in r.tensors:
        m = block.match(t.name)
        if m and int(m.group(1)) >= a.blocks:
            continue
        # The reader's data is the stored array (bytes per row for quantized types): the writer
        # derives the logical shape from it and raw_dtype.
        w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
        kept += 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"truncate-gguf: {a.dst}: {a.blocks} of {have} blocks, {kept} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
