"""Independent float64 numpy reference of the Llama-family forward pass, for GGUF files.

Weights are dequantized by the `gguf` package (not by our code). No KV cache: every call runs the
whole sequence, so it shares nothing with the engine but the model file.
"""
from __future__ import annotations

import numpy as np
import gguf


class NumpyLlama:
    def __init__(self, path: str):
        r = gguf.GGUFReader(path)
        f = {k: v.contents() for k, v in r.fields.items()
             if not k.startswith("tokenizer.ggml.")}
        arch = f["general.architecture"]
        self.n_layers = int(f[f"{arch}.block_count"])
        self.hidden = int(f[f"{arch}.embedding_length"])
        self.n_heads = int(f[f"{arch}.attention.head_count"])
        self.n_kv = int(f.get(f"{arch}.attention.head_count_kv", self.n_heads))
        self.head_dim = self.hidden // self.n_heads
        self.eps = float(f[f"{arch}.attention.layer_norm_rms_epsilon"])
        theta = float(f.get(f"{arch}.rope.freq_base", 10000.0))
        half = self.head_dim // 2
        self.inv_freq = theta ** (-2.0 * np.arange(half, dtype=np.float64) / self.head_dim)
        # llama.cpp permutes llama Q/K rows so RoPE rotates interleaved pairs (2i, 2i+1).
        self.interleaved = arch in ("llama", "mistral")
        self.w = {}
        for t in r.tensors:
            a = gguf.quants.dequantize(t.data, t.tensor_type)
            self.w[t.name] = np.asarray(a, dtype=np.float64).reshape([int(x) for x in reversed(t.shape)])
        self.lm_head = self.w.get("output.weight", self.w["token_embd.weight"])

    def _rms(self, x, weight):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def _rope(self, x, pos):
        # x: [T, heads, d]
        ang = pos[:, None].astype(np.float64) * self.inv_freq[None, :]  # [T, d/2]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        if self.interleaved:
            x0, x1 = x[..., 0::2], x[..., 1::2]
        else:
            x0, x1 = x[..., : self.head_dim // 2], x[..., self.head_dim // 2:]
        y0, y1 = x0 * cos - x1 * sin, x0 * sin + x1 * cos
        out = np.empty_like(x)
        if self.interleaved:
            out[..., 0::2], out[..., 1::2] = y0, y1
        else:
            out[..., : self.head_dim // 2], out[..., self.head_dim // 2:] = y0, y1
        return out

    def logits(self, ids) -> np.ndarray:
        """Logits [T, vocab] (float64) for every position of `ids`."""
        ids = np.asarray(ids)
        T, D, Hq, Hkv = len(ids), self.head_dim, self.n_heads, self.n_kv
        pos = np.arange(T)
        h = self.w["token_embd.weight"][ids]
        mask = np.triu(np.full((T, T), -np.inf), k=1)
        for l in range(self.n_layers):
            p = f"blk.{l}."
            x = self._rms(h, self.w[p + "attn_norm.weight"])
            q = (x @ self.w[p + "attn_q.weight"].T).reshape(T, Hq, D)
            k = (x @ self.w[p + "attn_k.weight"].T).reshape(T, Hkv, D)
            v = (x @ self.w[p + "attn_v.weight"].T).reshape(T, Hkv, D)
            q, k = self._rope(q, pos), self._rope(k, pos)
            rep = Hq // Hkv
            k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
            s = np.einsum("thd,shd->hts", q, k) / np.sqrt(D) + mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            att = np.einsum("hts,shd->thd", s, v).reshape(T, Hq * D)
            h = h + att @ self.w[p + "attn_output.weight"].T
            x = self._rms(h, self.w[p + "ffn_norm.weight"])
            g = x @ self.w[p + "ffn_gate.weight"].T
            u = x @ self.w[p + "ffn_up.weight"].T
            h = h + (g / (1.0 + np.exp(-g)) * u) @ self.w[p + "ffn_down.weight"].T
        return self._rms(h, self.w["output_norm.weight"]) @ self.lm_head.T

    def greedy(self, ids, n: int):
        """n greedy tokens after ids (EOS ignored), with the top-2 margin at each step."""
        ids, out, margins = list(ids), [], []
        for _ in range(n):
            last = self.logits(ids)[-1]
            top2 = np.sort(last)[-2:]
            margins.append(float(top2[1] - top2[0]))
            tok = int(np.argmax(last))
            out.append(tok)
            ids.append(tok)
        return out, margins
