"""Builds a Hugging Face model directory from a llama-architecture GGUF file (test fixture).

    make_hf_dir(gguf_path, out_dir) -> Path
    python hf_fixture.py MODEL.gguf OUT_DIR

The directory holds what transformers' save_pretrained would write for the same weights:
  config.json                      LlamaForCausalLM, every field from the GGUF metadata
  generation_config.json           bos/eos ids from tokenizer.ggml.{bos,eos}_token_id
  model-0000{1,2}-of-00002.safetensors + model.safetensors.index.json
                                   every tensor dequantized (gguf.quants.dequantize) to F32, HF names,
                                   Q/K rows un-permuted back to HF's rotate-half layout
  tokenizer.json                   from gguf_tokenizer_json.build_tokenizer_json(gguf_path)
  tokenizer_config.json            chat_template and special token strings, when the GGUF has them
Tied embeddings (no output.weight in the GGUF) give no lm_head.weight and tie_word_embeddings=true.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import save_file

SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")

# GGUF per-layer tensor name -> HF name suffix (after "model.layers.{i}.").
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


# RoPE layouts of the rows of a Q or K projection, per head of head_dim = 2 * half rows:
#   HF (rotate-half):     row  s * half + j   (s in {0, 1}, j < half)  pairs (j, j + half)
#   GGUF llama (interleaved pairs): row  2 * j + s                     pairs (2j, 2j + 1)
# Both rotate pair j by the same angle pos * theta^(-2j / head_dim). llama.cpp's converter maps HF
# to GGUF with reshape(n_head, 2, half, in).swapaxes(1, 2): the (s, j) row index becomes (j, s).
# The inverse views GGUF rows as (n_head, half, 2) = (h, j, s) and swaps back to (h, s, j).
# For K, n_head is the number of KV heads.
def hf_to_gguf_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permute (convert_hf_to_gguf.py LlamaModel.permute): HF rows -> GGUF rows."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_to_hf_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of hf_to_gguf_rows: GGUF interleaved-pair rows -> HF rotate-half rows."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GgufModel:
    """Metadata and tensors of a GGUF file, with the llama-family keys read once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.reader = gguf.GGUFReader(str(path))
        self.arch = self.field("general.architecture")
        if self.arch != "llama":
            raise ValueError(f"{path}: architecture {self.arch!r} is not llama")
        self.tensors = {t.name: t for t in self.reader.tensors}

    def field(self, key: str, default=None):
        f = self.reader.fields.get(key)
        return default if f is None else f.contents()

    def arch_field(self, key: str, default=None):
        return self.field(f"{self.arch}.{key}", default)

    def dequantized(self, name: str) -> np.ndarray:
        """F32 values, shape outermost first (PyTorch order: a linear weight is [out, in])."""
        t = self.tensors[name]
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        return np.ascontiguousarray(values.reshape([int(d) for d in reversed(t.shape)]))


def hf_config(m: GgufModel) -> dict:
    """config.json for LlamaForCausalLM from the GGUF metadata."""
    hidden = int(m.arch_field("embedding_length"))
    n_head = int(m.arch_field("attention.head_count"))
    head_dim = int(m.arch_field("attention.key_length", hidden // n_head))
    vocab = m.arch_field("vocab_size")
    if vocab is None:
        vocab = len(m.field("tokenizer.ggml.tokens"))
    eps = float(m.arch_field("attention.layer_norm_rms_epsilon"))
    theta = float(m.arch_field("rope.freq_base", 10000.0))
    if m.arch_field("rope.scaling.type") not in (None, "none"):
        raise ValueError(f"{m.path}: rope scaling is not converted by this fixture")
    return {
        "_name_or_path": m.field("general.name", m.path.stem),
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(m.arch_field("feed_forward_length")),
        "num_hidden_layers": int(m.arch_field("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(m.arch_field("attention.head_count_kv", n_head)),
        "head_dim": head_dim,
        "max_position_embeddings": int(m.arch_field("context_length")),
        # Stored as float32 in GGUF: the shortest decimal that round-trips to the same float32.
        "rms_norm_eps": float(str(np.float32(eps))),
        "rope_theta": float(str(np.float32(theta))),
        "rope_scaling": None,
        "vocab_size": int(vocab),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": "output.weight" not in m.tensors,
        "bos_token_id": int(m.field("tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(m.field("tokenizer.ggml.eos_token_id")),
        "torch_dtype": "float32",
    }


def hf_name_of(gguf_name: str) -> str:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in LAYER_NAMES and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.weight"
    raise ValueError(f"no Hugging Face name for GGUF tensor {gguf_name!r}")


def hf_tensor(m: GgufModel, config: dict, gguf_name: str) -> np.ndarray:
    w = m.dequantized(gguf_name)
    if gguf_name.endswith(".attn_q.weight"):
        w = gguf_to_hf_rows(w, config["num_attention_heads"])
    elif gguf_name.endswith(".attn_k.weight"):
        w = gguf_to_hf_rows(w, config["num_key_value_heads"])
    return np.ascontiguousarray(w)


def shard_of(hf_name: str, n_layers: int) -> int:
    """Embeddings and the first half of the layers in shard 0; the rest and the final norm in 1."""
    if hf_name.startswith("model.layers."):
        return 0 if int(hf_name.split(".")[2]) < n_layers // 2 else 1
    return 0 if hf_name == "model.embed_tokens.weight" else 1


def write_tokenizer_files(m: GgufModel, out: Path) -> None:
    """tokenizer.json (skipped with a warning while gguf_tokenizer_json.py is not in the tree) and
    tokenizer_config.json."""
    try:
        from gguf_tokenizer_json import build_tokenizer_json  # tests/python/gguf_tokenizer_json.py
    except ModuleNotFoundError as e:
        if e.name != "gguf_tokenizer_json":
            raise
        warnings.warn("gguf_tokenizer_json is missing: the HF fixture has no tokenizer.json")
    else:
        tok = build_tokenizer_json(str(m.path))
        text = tok if isinstance(tok, str) else json.dumps(tok, ensure_ascii=False)
        (out / "tokenizer.json").write_text(text, encoding="utf-8")

    tokens = m.field("tokenizer.ggml.tokens")
    tok_config = {"tokenizer_class": "GPT2Tokenizer",
                  "model_max_length": int(m.arch_field("context_length"))}
    for key, field in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                       ("pad_token", "padding")):
        token_id = m.field(f"tokenizer.ggml.{field}_token_id")
        if token_id is not None and tokens is not None:
            tok_config[key] = tokens[int(token_id)]
    template = m.field("tokenizer.chat_template")
    if template is not None:
        tok_config["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False),
                                               encoding="utf-8")


def make_hf_dir(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Writes the Hugging Face directory for gguf_path into out_dir (created); returns out_dir."""
    m = GgufModel(gguf_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = hf_config(m)
    n_layers = config["num_hidden_layers"]

    names = {g: hf_name_of(g) for g in m.tensors}
    weight_map, total_size = {}, 0
    for shard_index, shard in enumerate(SHARDS):  # one shard in memory at a time
        tensors = {h: hf_tensor(m, config, g) for g, h in names.items()
                   if shard_of(h, n_layers) == shard_index}
        save_file(tensors, str(out / shard), metadata={"format": "pt"})
        for h, w in tensors.items():
            weight_map[h] = shard
            total_size += w.nbytes
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}, indent=2))
    write_tokenizer_files(m, out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} MODEL.gguf OUT_DIR")
    print(make_hf_dir(sys.argv[1], sys.argv[2]))


def with_file(dest: Path, hf_dir: Path, name: str, text: str) -> Path:
    """`dest`, made: a copy of the directory `hf_dir` (links to its files) whose file `name` holds
    `text` instead."""
    dest.mkdir()
    for f in Path(hf_dir).iterdir():
        if f.name != name:
            (dest / f.name).symlink_to(f)
    (dest / name).write_text(text, encoding="utf-8")
    return dest
