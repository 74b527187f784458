"""Dequantization must be bit-identical to gguf-py's numpy dequantizer (gguf.quants.dequantize).

Two sources of blocks go through bin/dequant_tool and through gguf-py:
  - every tensor of the default model (Q8_0 token_embd, Q4_1 weights, F32 norms);
  - random blocks of every supported type: random bytes with random finite fp16 scales written
    over the scale fields, and fully random bytes (NaN/Inf scales included).
Comparison is on the f32 bit patterns; positions that are NaN on both sides count as equal (NaN
payloads may legitimately differ).

Environment (see conftest.py): SPARSESERVE_BUILD (build dir with bin/dequant_tool),
SPARSESERVE_MODEL (GGUF model; the model tests skip when it is missing).
"""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

from conftest import model_file_path

# Byte offsets, within one block, of each fp16 scale field (d, dmin/m) of the quantized types.
SCALE_OFFSETS = {
    Q.Q4_0: [0],
    Q.Q4_1: [0, 2],
    Q.Q5_0: [0],
    Q.Q5_1: [0, 2],
    Q.Q8_0: [0],
    Q.Q2_K: [80, 82],
    Q.Q3_K: [108],
    Q.Q4_K: [0, 2],
    Q.Q5_K: [0, 2],
    Q.Q6_K: [208],
}
PLAIN = [Q.F32, Q.F16, Q.BF16]
N_BLOCKS = 400


def assert_bit_identical(got: np.ndarray, want: np.ndarray, what: str) -> None:
    got = np.ascontiguousarray(got, dtype=np.float32).ravel()
    want = np.ascontiguousarray(want, dtype=np.float32).ravel()
    assert got.shape == want.shape, f"{what}: {got.shape} values, gguf-py gives {want.shape}"
    got_nan, want_nan = np.isnan(got), np.isnan(want)
    differ = (got.view(np.uint32) != want.view(np.uint32)) & ~(got_nan & want_nan)
    if differ.any():
        i = int(np.flatnonzero(differ)[0])
        pytest.fail(f"{what}: {int(differ.sum())} of {got.size} values differ; first at {i}: "
                    f"got {got[i]!r} (0x{got.view(np.uint32)[i]:08x}), "
                    f"gguf-py {want[i]!r} (0x{want.view(np.uint32)[i]:08x})")


def run_raw(tool, tmp_path, qtype: Q, raw: np.ndarray) -> np.ndarray:
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    n = raw.size // block_bytes * block_elems
    src, dst = tmp_path / f"{qtype.name}.bin", tmp_path / f"{qtype.name}.f32"
    raw.tofile(src)
    subprocess.run([str(tool("dequant_tool")), "raw", "--type", qtype.name, "--n", str(n),
                    "--in", str(src), "--out", str(dst)], check=True)
    return np.fromfile(dst, dtype=np.float32)


def finite_f16_bits(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random fp16 bit patterns over the whole finite range (zeros and subnormals included)."""
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    inf_or_nan = (bits & 0x7C00) == 0x7C00
    bits[inf_or_nan] &= 0xBFFF  # clear the exponent's top bit: finite
    return bits


@pytest.mark.parametrize("qtype", list(SCALE_OFFSETS), ids=lambda q: q.name)
def test_random_blocks_finite_scales(qtype, tool, tmp_path):
    rng = np.random.default_rng(1000 + int(qtype))
    _, block_bytes = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (N_BLOCKS, block_bytes), dtype=np.uint8)
    for off in SCALE_OFFSETS[qtype]:
        blocks[:, off:off + 2] = finite_f16_bits(rng, N_BLOCKS).view(np.uint8).reshape(N_BLOCKS, 2)
    got = run_raw(tool, tmp_path, qtype, blocks)
    want = dequantize(blocks.reshape(1, -1), qtype)
    assert not np.isnan(want).any()
    assert_bit_identical(got, want, f"{qtype.name} random blocks")


@pytest.mark.parametrize("qtype", list(SCALE_OFFSETS) + PLAIN, ids=lambda q: q.name)
def test_random_bytes_nan_aware(qtype, tool, tmp_path):
    rng = np.random.default_rng(2000 + int(qtype))
    _, block_bytes = GGML_QUANT_SIZES[qtype]
    count = N_BLOCKS if qtype in SCALE_OFFSETS else 4096
    blocks = rng.integers(0, 256, (count, block_bytes), dtype=np.uint8)
    got = run_raw(tool, tmp_path, qtype, blocks)
    with np.errstate(all="ignore"):  # inf * 0 and NaN scales are the point here
        want = dequantize(blocks.reshape(1, -1), qtype)
    assert_bit_identical(got, want, f"{qtype.name} random bytes")


def test_raw_rejects_bad_sizes(tool, tmp_path):
    src = tmp_path / "short.bin"
    np.zeros(17, dtype=np.uint8).tofile(src)
    r = subprocess.run([str(tool("dequant_tool")), "raw", "--type", "Q4_0", "--n", "32",
                        "--in", str(src), "--out", str(tmp_path / "o.f32")], capture_output=True, text=True)
    assert r.returncode == 1 and "need 18" in r.stderr
    r = subprocess.run([str(tool("dequant_tool")), "raw", "--type", "Q4_0", "--n", "31",
                        "--in", str(src), "--out", str(tmp_path / "o.f32")], capture_output=True, text=True)
    assert r.returncode == 1 and "not a multiple of the Q4_0 block size 32" in r.stderr


def model_tensor_names() -> list[str]:
    path = model_file_path()
    if not path.is_file():
        return ["<model missing>"]
    return [t.name for t in GGUFReader(path).tensors]


@pytest.fixture(scope="module")
def reader(model_path):
    return GGUFReader(model_path)


@pytest.mark.parametrize("name", model_tensor_names())
def test_model_tensor(name, reader, model_path, tool, tmp_path):
    tensors = {t.name: t for t in reader.tensors}
    t = tensors[name]
    out = tmp_path / "t.f32"
    subprocess.run([str(tool("dequant_tool")), "tensor", "--model", str(model_path), "--name", name,
                    "--out", str(out)], check=True)
    got = np.fromfile(out, dtype=np.float32)
    want = dequantize(t.data, t.tensor_type)
    assert got.size == int(np.prod(t.shape))
    assert_bit_identical(got, want, f"{name} ({t.tensor_type.name})")


def test_model_covers_every_type(reader):
    types = {t.tensor_type for t in reader.tensors}
    assert {Q.Q8_0, Q.Q4_1, Q.F32} <= types
