"""The Hugging Face path on real weights: the default model converted to a HF directory
(hf_fixture.py: un-permuted Q/K, F32 safetensors shards, tokenizer.json) must give the same token ids
and the same logits as the GGUF it came from."""
import json
import subprocess

import numpy as np
import pytest

PROMPTS = [
    "The history of the printing press begins in the fifteenth century, when",
    "<|im_start|>user\nName three prime numbers.<|im_end|>\n<|im_start|>assistant\n",
]


def run(tool, model, prompt, out):
    r = subprocess.run([str(tool("logits_tool")), "--model", str(model), "--prompt", prompt,
                        "--logits-out", str(out), "--greedy", "16"],
                       check=True, capture_output=True, text=True, timeout=600)
    return json.loads(r.stdout)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_hf_directory_matches_gguf(tmp_path, tool, model_path, hf_model_dir, prompt):
    if not (hf_model_dir / "tokenizer.json").exists():
        pytest.fail("the fixture wrote no tokenizer.json")
    g = run(tool, model_path, prompt, tmp_path / "g.f32")
    h = run(tool, hf_model_dir, prompt, tmp_path / "h.f32")
    assert h["ids"] == g["ids"]
    lg = np.fromfile(tmp_path / "g.f32", dtype=np.float32).reshape(len(g["ids"]), -1).astype(np.float64)
    lh = np.fromfile(tmp_path / "h.f32", dtype=np.float32).reshape(len(h["ids"]), -1).astype(np.float64)
    rel = np.linalg.norm(lh - lg, axis=1) / np.linalg.norm(lg, axis=1)
    assert rel.max() < 1e-4, f"worst position {int(rel.argmax())}: {rel.max():.2e}"
    assert h["greedy"] == g["greedy"]


def test_info_reports_the_same_model(tool, build_dir, model_path, hf_model_dir):
    def info(model):
        r = subprocess.run([str(build_dir / "bin" / "sparseserve"), "info", "--json", "--model", str(model)],
                           check=True, capture_output=True, text=True, timeout=120)
        return json.loads(r.stdout)
    g, h = info(model_path), info(hf_model_dir)
    for key in ("layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab_size",
                "context_length", "tied_embeddings", "chat_template", "bos_id"):
        assert g[key] == h[key], key
    assert g["rope_layout"] == "interleaved" and h["rope_layout"] == "half"
    assert g["tensor_types"] == {"Q4_1": 210, "Q8_0": 1, "F32": 61}
    assert h["tensor_types"] == {"F32": 272}
