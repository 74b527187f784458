"""The Hugging Face fixture (hf_fixture.py) and the engine's reading of it (bin/hf_inspect_tool).

Checks: the Q/K row permutation round-trips and turns interleaved RoPE into half-split RoPE; the
directory holds the GGUF's weights under HF names; the C++ loader reports the config and every
tensor with its shape.
"""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from safetensors import safe_open

from hf_fixture import SHARDS, GgufModel, gguf_to_hf_rows, hf_name_of, hf_to_gguf_rows


def rope_interleaved(x: np.ndarray, pos: np.ndarray, theta: float) -> np.ndarray:
    """RoPE over pairs (2j, 2j+1) of the last axis; x is [n_pos, n_head, head_dim]."""
    hd = x.shape[-1]
    ang = pos[:, None, None] * theta ** (-np.arange(0, hd, 2) / hd)  # [n_pos, 1, hd/2]
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * np.cos(ang) - b * np.sin(ang)
    out[..., 1::2] = a * np.sin(ang) + b * np.cos(ang)
    return out


def rope_half(x: np.ndarray, pos: np.ndarray, theta: float) -> np.ndarray:
    """RoPE over pairs (j, j + head_dim/2) of the last axis (HF rotate_half)."""
    hd = x.shape[-1]
    ang = pos[:, None, None] * theta ** (-np.arange(0, hd, 2) / hd)
    a, b = x[..., : hd // 2], x[..., hd // 2:]
    return np.concatenate([a * np.cos(ang) - b * np.sin(ang), a * np.sin(ang) + b * np.cos(ang)], -1)


def half_to_interleaved_index(hd: int) -> np.ndarray:
    """perm with interleaved[..., i] == half[..., perm[i]]: index 2j + s <- s * hd/2 + j."""
    return np.array([s * (hd // 2) + j for j in range(hd // 2) for s in (0, 1)])


@pytest.fixture(scope="module")
def gguf_model(model_path):
    return GgufModel(model_path)


@pytest.fixture(scope="module")
def hf_config(hf_model_dir):
    return json.loads((hf_model_dir / "config.json").read_text())


def load_hf_tensor(hf_model_dir, name: str) -> np.ndarray:
    index = json.loads((hf_model_dir / "model.safetensors.index.json").read_text())
    with safe_open(str(hf_model_dir / index["weight_map"][name]), framework="np") as f:
        return f.get_tensor(name)


def expected_tensors(c: dict) -> dict[str, list[int]]:
    """HF name -> shape ([out, in] for linear weights) of a Llama checkpoint with config c."""
    hidden, hd, inter = c["hidden_size"], c["head_dim"], c["intermediate_size"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    out = {"model.embed_tokens.weight": [c["vocab_size"], hidden], "model.norm.weight": [hidden]}
    if not c["tie_word_embeddings"]:
        out["lm_head.weight"] = [c["vocab_size"], hidden]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out.update({
            p + "input_layernorm.weight": [hidden],
            p + "self_attn.q_proj.weight": [q, hidden],
            p + "self_attn.k_proj.weight": [kv, hidden],
            p + "self_attn.v_proj.weight": [kv, hidden],
            p + "self_attn.o_proj.weight": [hidden, q],
            p + "post_attention_layernorm.weight": [hidden],
            p + "mlp.gate_proj.weight": [inter, hidden],
            p + "mlp.up_proj.weight": [inter, hidden],
            p + "mlp.down_proj.weight": [hidden, inter],
        })
    return out


def inspect(tool, path) -> dict:
    out = subprocess.run([str(tool("hf_inspect_tool")), str(path)], check=True,
                         capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout)


# --- the permutation, on its own ---

@pytest.mark.parametrize("n_head,head_dim,cols", [(1, 4, 3), (9, 64, 576), (3, 64, 576), (2, 128, 5)])
def test_permutation_round_trip(n_head, head_dim, cols):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n_head * head_dim, cols)).astype(np.float32)
    assert np.array_equal(hf_to_gguf_rows(gguf_to_hf_rows(w, n_head), n_head), w)
    assert np.array_equal(gguf_to_hf_rows(hf_to_gguf_rows(w, n_head), n_head), w)
    # 1-D (a bias) permutes the same way as the rows of a matrix.
    assert np.array_equal(gguf_to_hf_rows(w[:, 0], n_head), gguf_to_hf_rows(w, n_head)[:, 0])


def test_permutation_small_case_by_hand():
    # One head of 4 rows: GGUF rows (2j + s) = 0:(j0,s0) 1:(j0,s1) 2:(j1,s0) 3:(j1,s1);
    # HF row s * 2 + j, so HF order is GGUF rows [0, 2, 1, 3].
    assert gguf_to_hf_rows(np.arange(4), 1).tolist() == [0, 2, 1, 3]
    assert gguf_to_hf_rows(np.arange(8), 2).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert gguf_to_hf_rows(np.arange(6), 1).tolist() == [0, 2, 4, 1, 3, 5]


# --- the permutation, on the model's weights ---

@pytest.mark.parametrize("layer", [0, -1])
def test_interleaved_rope_on_gguf_equals_half_rope_on_hf(gguf_model, hf_model_dir, hf_config, layer):
    c = hf_config
    layer = layer % c["num_hidden_layers"]
    hd, theta = c["head_dim"], c["rope_theta"]
    rng = np.random.default_rng(layer)
    x = rng.standard_normal((6, c["hidden_size"]))
    pos = np.array([0, 1, 2, 17, 1000, c["max_position_embeddings"] - 1], dtype=np.float64)
    perm = half_to_interleaved_index(hd)

    rotated = {}
    for proj, n_head in (("q", c["num_attention_heads"]), ("k", c["num_key_value_heads"])):
        w_gguf = gguf_model.dequantized(f"blk.{layer}.attn_{proj}.weight").astype(np.float64)
        w_hf = load_hf_tensor(hf_model_dir, f"model.layers.{layer}.self_attn.{proj}_proj.weight")
        assert w_hf.dtype == np.float32 and w_hf.shape == w_gguf.shape
        y_gguf = (x @ w_gguf.T).reshape(len(pos), n_head, hd)
        y_hf = (x @ w_hf.astype(np.float64).T).reshape(len(pos), n_head, hd)
        r_gguf, r_hf = rope_interleaved(y_gguf, pos, theta), rope_half(y_hf, pos, theta)
        np.testing.assert_allclose(r_gguf, r_hf[..., perm], rtol=1e-9, atol=1e-9)
        # Without the un-permutation the two RoPEs disagree (the check has teeth).
        assert not np.allclose(rope_half(y_gguf, pos, theta), r_gguf, atol=1e-3)
        rotated[proj] = (r_gguf, r_hf)

    # Attention logits q.k (GQA: query head h reads kv head h // group) are layout-independent.
    group = c["num_attention_heads"] // c["num_key_value_heads"]
    for r in (0, 1):
        q, k = rotated["q"][r], np.repeat(rotated["k"][r], group, axis=1)
        rotated[f"scores{r}"] = np.einsum("qhd,khd->hqk", q, k)
    np.testing.assert_allclose(rotated["scores0"], rotated["scores1"], rtol=1e-9, atol=1e-9)


# --- the directory ---

def test_directory_layout_and_config(hf_model_dir, hf_config, gguf_model):
    files = {p.name for p in hf_model_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json",
            "tokenizer_config.json", *SHARDS} <= files
    assert "model.safetensors" not in files
    c = hf_config
    assert c["architectures"] == ["LlamaForCausalLM"] and c["model_type"] == "llama"
    m = gguf_model
    assert c["hidden_size"] == m.arch_field("embedding_length")
    assert c["num_hidden_layers"] == m.arch_field("block_count")
    assert c["num_attention_heads"] == m.arch_field("attention.head_count")
    assert c["num_key_value_heads"] == m.arch_field("attention.head_count_kv")
    assert c["intermediate_size"] == m.arch_field("feed_forward_length")
    assert c["max_position_embeddings"] == m.arch_field("context_length")
    assert c["vocab_size"] == len(m.field("tokenizer.ggml.tokens"))
    assert np.float32(c["rms_norm_eps"]) == np.float32(m.arch_field("attention.layer_norm_rms_epsilon"))
    assert np.float32(c["rope_theta"]) == np.float32(m.arch_field("rope.freq_base"))
    assert c["tie_word_embeddings"] is ("output.weight" not in m.tensors)
    gen = json.loads((hf_model_dir / "generation_config.json").read_text())
    assert gen == {"bos_token_id": m.field("tokenizer.ggml.bos_token_id"),
                   "eos_token_id": m.field("tokenizer.ggml.eos_token_id")}
    tok_config = json.loads((hf_model_dir / "tokenizer_config.json").read_text())
    assert tok_config["chat_template"] == m.field("tokenizer.chat_template")


def test_shards_hold_the_gguf_weights(hf_model_dir, hf_config, gguf_model):
    index = json.loads((hf_model_dir / "model.safetensors.index.json").read_text())
    expected = expected_tensors(hf_config)
    assert set(index["weight_map"]) == set(expected)
    assert set(index["weight_map"].values()) == set(SHARDS)
    to_gguf = {hf_name_of(g): g for g in gguf_model.tensors}
    assert set(to_gguf) == set(expected)
    total = 0
    for shard in SHARDS:
        with safe_open(str(hf_model_dir / shard), framework="np") as f:
            for name in f.keys():
                assert index["weight_map"][name] == shard
                w = f.get_tensor(name)
                assert w.dtype == np.float32 and list(w.shape) == expected[name], name
                ref = gguf_model.dequantized(to_gguf[name])
                if name.endswith("q_proj.weight"):
                    ref = gguf_to_hf_rows(ref, hf_config["num_attention_heads"])
                elif name.endswith("k_proj.weight"):
                    ref = gguf_to_hf_rows(ref, hf_config["num_key_value_heads"])
                assert np.array_equal(w, ref), name
                total += w.nbytes
    assert total == index["metadata"]["total_size"]


def test_tokenizer_json(hf_model_dir, gguf_model):
    pytest.importorskip("gguf_tokenizer_json", reason="tests/python/gguf_tokenizer_json.py not written yet")
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(hf_model_dir / "tokenizer.json"))
    assert tok.get_vocab_size(with_added_tokens=True) == len(gguf_model.field("tokenizer.ggml.tokens"))


# --- the engine reading it ---

def test_inspect_tool_reads_the_directory(tool, hf_model_dir, hf_config):
    info = inspect(tool, hf_model_dir)
    c, got = hf_config, info["config"]
    assert info["format"] == "hf"
    assert got["architecture"] == "llama"
    assert got["n_layers"] == c["num_hidden_layers"]
    assert got["hidden"] == c["hidden_size"]
    assert got["n_heads"] == c["num_attention_heads"]
    assert got["n_kv_heads"] == c["num_key_value_heads"]
    assert got["head_dim"] == got["rope_dim"] == c["head_dim"]
    assert got["intermediate"] == c["intermediate_size"]
    assert got["vocab_size"] == c["vocab_size"]
    assert got["max_context"] == c["max_position_embeddings"]
    assert np.float32(got["rms_eps"]) == np.float32(c["rms_norm_eps"])
    assert np.float32(got["rope_theta"]) == np.float32(c["rope_theta"])
    assert got["rope_layout"] == "half"
    assert got["rope_scaling"]["kind"] == "none"
    assert got["tied_embeddings"] is c["tie_word_embeddings"]
    assert got["qkv_bias"] is False
    assert got["bos_id"] == c["bos_token_id"]
    assert got["eos_ids"] == [c["eos_token_id"]]
    assert info["generation"]["eos_ids"] == [c["eos_token_id"]]

    expected = expected_tensors(c)
    assert info["tensor_count"] == len(expected) == len(info["tensors"])
    for t in info["tensors"]:
        assert t["dtype"] == "F32", t["name"]
        assert t["shape"] == expected[t["name"]], t["name"]
        assert t["nbytes"] == 4 * int(np.prod(t["shape"])), t["name"]
    assert sorted(t["name"] for t in info["tensors"]) == sorted(expected)


def test_inspect_tool_agrees_with_the_gguf(tool, hf_model_dir, model_path):
    hf, gg = inspect(tool, hf_model_dir), inspect(tool, model_path)
    assert gg["format"] == "gguf" and gg["config"]["rope_layout"] == "interleaved"
    for key in ("architecture", "name", "n_layers", "hidden", "n_heads", "n_kv_heads", "head_dim",
                "intermediate", "vocab_size", "max_context", "rms_eps", "rope_theta", "rope_dim",
                "tied_embeddings", "qkv_bias", "bos_id", "eos_ids"):
        assert hf["config"][key] == gg["config"][key], key
    assert hf["tensor_count"] == gg["tensor_count"]


def test_inspect_tool_reports_a_bad_directory(tool, tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    out = subprocess.run([str(tool("hf_inspect_tool")), str(tmp_path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1
    assert "config.json" in out.stderr and "hidden_size" in out.stderr
