#!/usr/bin/env python3
"""Writes the small GGUF files that seed the fuzzer's corpus (tests/fuzz/seeds/*.fuzz).

Each seed exercises a different part of the reader: every metadata value type, arrays of strings
and nested arrays, a custom alignment, version 2, and tensors of each dequantizable type. Run from
anywhere with the project's venv: .venv/bin/python tests/fuzz/make_seeds.py
"""
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, GGMLQuantizationType as Q, GGUFValueType as V
from gguf.constants import GGML_QUANT_SIZES

SEEDS = Path(__file__).resolve().parent / "seeds"


def quant_tensor(w: GGUFWriter, name: str, qtype: Q, rows: int, blocks_per_row: int, seed: int):
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    raw = np.random.default_rng(seed).integers(0, 256, (rows, blocks_per_row * block_bytes), dtype=np.uint8)
    w.add_tensor(name, raw, raw_dtype=qtype)


def write(name: str, build, alignment: int | None = None, version: int = 3):
    path = SEEDS / name
    w = GGUFWriter(path, "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    build(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if version != 3:  # v2 and v3 share the layout; only the version field differs
        data = bytearray(path.read_bytes())
        data[4:8] = version.to_bytes(4, "little")
        path.write_bytes(bytes(data))


def all_values(w: GGUFWriter):
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float32("t.f32", 1.5)
    w.add_float64("t.f64", -2.25)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_array("t.strings", ["a", "", "<|im_start|>"])
    w.add_array("t.ints", [1, 2, 3])
    w.add_key_value("t.nested", [[1, 2], [3]], V.ARRAY, sub_type=V.ARRAY)
    w.add_tensor("f32", np.arange(8, dtype=np.float32).reshape(2, 4))


def legacy_quants(w: GGUFWriter):
    for i, q in enumerate([Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]):
        quant_tensor(w, f"blk.0.{q.name.lower()}.weight", q, 2, 1, i)


def k_quants(w: GGUFWriter):
    for i, q in enumerate([Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]):
        quant_tensor(w, f"blk.1.{q.name.lower()}.weight", q, 1, 1, 10 + i)


def halves(w: GGUFWriter):
    w.add_tensor("f16", np.linspace(-1, 1, 12, dtype=np.float16).reshape(3, 4))
    bf16 = np.arange(6, dtype=np.uint16).reshape(2, 3) + 0x3f80
    w.add_tensor("bf16", bf16.view(np.uint8).reshape(2, 6), raw_dtype=Q.BF16)
    w.add_tensor("f32_3d", np.ones((2, 2, 2), dtype=np.float32))


def metadata_only(w: GGUFWriter):
    w.add_string("general.name", "seed")
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "a", "b"])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.0, -3.0])


if __name__ == "__main__":
    SEEDS.mkdir(exist_ok=True)
    write("all_values.fuzz", all_values)
    write("legacy_quants.fuzz", legacy_quants)
    write("k_quants.fuzz", k_quants)
    write("halves_align64.fuzz", halves, alignment=64)
    write("metadata_v2.fuzz", metadata_only, version=2)
    total = sum(p.stat().st_size for p in SEEDS.glob("*.gguf"))
    print(f"wrote seeds under {SEEDS} ({total} bytes)")
