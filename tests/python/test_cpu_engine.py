"""The CPU engine against the independent numpy reference (numpy_llama.py) on the default model."""
import json
import subprocess

import numpy as np
import pytest

from numpy_llama import NumpyLlama

PROMPTS = [
    "The quick brown fox jumps over the lazy dog. " * 8,
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Once upon a time, in a small village by the sea, there lived",
    "1, 2, 3, 5, 8, 13, 21,",
]


@pytest.fixture(scope="module")
def reference(model_path):
    return NumpyLlama(str(model_path))


def run_tool(build_dir, model_path, *args):
    out = subprocess.run([str(build_dir / "bin" / "logits_tool"), "--model", str(model_path), *args],
                         check=True, capture_output=True, text=True, timeout=600)
    return json.loads(out.stdout)


@pytest.mark.parametrize("chunk", [0, 13])
def test_logits_match_reference_at_every_position(tmp_path, build_dir, model_path, reference, chunk):
    out = tmp_path / "logits.f32"
    info = run_tool(build_dir, model_path, "--prompt", PROMPTS[0], "--chunk", str(chunk), "--logits-out", str(out))
    ids = info["ids"]
    assert len(ids) >= 64
    ours = np.fromfile(out, dtype=np.float32).reshape(len(ids), -1).astype(np.float64)
    ref = reference.logits(ids)
    rel = np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert np.all(np.isfinite(ours))
    assert rel.max() < 1e-3, f"worst position {int(rel.argmax())}: relative error {rel.max():.2e}"


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_continuations_identical(build_dir, model_path, reference, prompt):
    info = run_tool(build_dir, model_path, "--prompt", prompt, "--greedy", "32")
    ref, margins = reference.greedy(info["ids"], 32)
    if info["greedy"] != ref:
        i = next(i for i, (a, b) in enumerate(zip(info["greedy"], ref)) if a != b)
        pytest.fail(f"diverged at step {i}: ours {info['greedy'][i]}, reference {ref[i]} "
                    f"(reference top-2 margin {margins[i]:.2e})")
