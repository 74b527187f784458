"""Builds a Hugging Face tokenizer.json from the tokenizer metadata of a GGUF file.

    build_tokenizer_json(gguf_path, pre=None) -> str

Uses the `tokenizers` library itself (BPE model from tokenizer.ggml.tokens/merges, the
pre-tokenizer of the GGUF `tokenizer.ggml.pre` kind, ByteLevel decoder, control tokens as special
added tokens and user-defined tokens as non-special ones, a TemplateProcessing BOS when
tokenizer.ggml.add_bos_token says so). Self-contained: needs only `gguf` and `tokenizers`.
`pre` overrides the GGUF kind ("smollm", "llama-bpe", "qwen2", "gpt2"), for tests that exercise
another family's pre-tokenizer with the same vocabulary.
"""

from __future__ import annotations

import json

from gguf import GGUFReader
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

# Token types of tokenizer.ggml.token_type.
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 2, 3, 4

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

PRE_KINDS = {
    "default": "gpt2", "gpt2": "gpt2", "gpt-2": "gpt2",
    "smollm": "smollm", "starcoder": "smollm", "refact": "smollm",
    "llama-bpe": "llama3", "llama3": "llama3", "llama-v3": "llama3",
    "qwen2": "qwen2", "deepseek-r1-qwen": "qwen2",
}


def _field(reader: GGUFReader, key: str):
    return reader.fields.get(key)


def _string(reader: GGUFReader, key: str) -> str | None:
    f = _field(reader, key)
    return None if f is None else bytes(f.parts[f.data[0]]).decode("utf-8")


def _scalar(reader: GGUFReader, key: str):
    f = _field(reader, key)
    return None if f is None else f.parts[f.data[0]][0].item()


def _strings(reader: GGUFReader, key: str) -> list[str]:
    f = _field(reader, key)
    if f is None:
        raise ValueError(f"missing {key}")
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def _ints(reader: GGUFReader, key: str) -> list[int] | None:
    f = _field(reader, key)
    return None if f is None else [int(f.parts[i][0]) for i in f.data]


def _pre_tokenizer(kind: str):
    if kind == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind == "smollm":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    pattern = LLAMA3_PATTERN if kind == "llama3" else QWEN2_PATTERN
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def build_tokenizer_json(gguf_path: str, pre: str | None = None) -> str:
    """Returns the tokenizer.json text equivalent to the GGUF file's tokenizer."""
    reader = GGUFReader(str(gguf_path))
    model_kind = _string(reader, "tokenizer.ggml.model")
    if model_kind != "gpt2":
        raise ValueError(f"{gguf_path}: tokenizer.ggml.model {model_kind!r} is not byte-level BPE")
    tokens = _strings(reader, "tokenizer.ggml.tokens")
    types = _ints(reader, "tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens)
    merges = []
    for m in _strings(reader, "tokenizer.ggml.merges"):
        sp = m.index(" ", 1)
        merges.append((m[:sp], m[sp + 1:]))
    pre_name = pre if pre is not None else (_string(reader, "tokenizer.ggml.pre") or "default")
    if pre_name not in PRE_KINDS:
        raise ValueError(f"{gguf_path}: unsupported tokenizer.ggml.pre {pre_name!r}")
    family = PRE_KINDS[pre_name]

    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=merges, ignore_merges=(family == "llama3"))
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = _pre_tokenizer(family)
    if family == "qwen2":
        tok.normalizer = normalizers.NFC()  # Qwen2's tokenizer.json (and transformers' Qwen2Converter)
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False)
               for t, ty in zip(tokens, types) if ty == TOKEN_CONTROL]
    user = [AddedToken(t, special=False, normalized=False)
            for t, ty in zip(tokens, types) if ty == TOKEN_USER_DEFINED]
    if special:
        tok.add_special_tokens(special)
    if user:
        tok.add_tokens(user)

    add_bos = _scalar(reader, "tokenizer.ggml.add_bos_token")
    if add_bos is None:
        add_bos = family == "llama3"
    bos = _scalar(reader, "tokenizer.ggml.bos_token_id")
    if add_bos and bos is not None:
        bos_text = tokens[int(bos)]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos_text} $A", pair=f"{bos_text} $A {bos_text} $B",
            special_tokens=[(bos_text, int(bos))])
    return tok.to_str()


if __name__ == "__main__":
    import sys

    text = build_tokenizer_json(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
    json.loads(text)
    sys.stdout.write(text)
