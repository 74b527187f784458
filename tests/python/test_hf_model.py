"""The Hugging Face path on real weights: the default model converted to a HF directory
(hf_fixture.py: un-permuted Q/K, F32 safetensors shards, tokenizer.json) must give the same token ids
and the same logits as the GGUF it came from."""
import json
import subprocess

import numpy as np
import pytest
from hf_fixture import with_file

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


def with_tokenizer(tmp_path, hf_model_dir, tokenizer_json):
    """A copy of the fixture's directory (links) with `tokenizer_json` as its tokenizer.json."""
    return with_file(tmp_path / "hf", hf_model_dir, "tokenizer.json", json.dumps(tokenizer_json))


def test_ids_past_the_tokenizer_decode_to_nothing(tmp_path, build_dir, hf_model_dir):
    """A model with more output rows than its tokenizer has tokens (Qwen2.5: 151936 rows, 151665
    tokens) may sample the extra ids: they decode to nothing, as HF tokenizers drops them. Here the
    fixture's highest token leaves tokenizer.json and logit_bias forces it (a 500 before)."""
    import httpx
    from conftest_server import ServerProcess

    tj = json.loads((hf_model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tj["model"]["vocab"]
    text, top = max(vocab.items(), key=lambda kv: kv[1])
    assert top == max(vocab.values()) and all(a["id"] < top for a in tj["added_tokens"])
    del vocab[text]
    tj["model"]["merges"] = [m for m in tj["model"]["merges"]
                             if (m.replace(" ", "", 1) if isinstance(m, str) else "".join(m)) != text]
    d = with_tokenizer(tmp_path, hf_model_dir, tj)

    srv = ServerProcess(build_dir / "bin" / "sparseserve", d, tmp_path / "server.log")
    try:
        srv.wait_ready()
        r = httpx.post(srv.base_url + "/v1/completions", timeout=120,
                       json={"prompt": "Hello", "max_tokens": 3, "temperature": 0, "logprobs": 1,
                             "logit_bias": {str(top): 100}})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["text"] == "" and choice["logprobs"]["tokens"] == ["", "", ""]
        assert r.json()["usage"]["completion_tokens"] == 3
    finally:
        assert srv.terminate() == 0, srv.log_tail()


def test_a_tokenizer_past_the_models_rows_is_refused(tmp_path, build_dir, hf_model_dir):
    """A tokenizer with more tokens than the model has embedding rows: its extra ids could be fed to
    the model or named as stops and index past its tables. Refused at load, naming the counts."""
    tj = json.loads((hf_model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    rows = json.loads((hf_model_dir / "config.json").read_text())["vocab_size"]
    n = max(max(tj["model"]["vocab"].values()), max(a["id"] for a in tj["added_tokens"])) + 1
    assert n == rows
    tj["added_tokens"].append({"id": n, "content": "<|extra|>", "single_word": False, "lstrip": False,
                               "rstrip": False, "normalized": False, "special": True})
    d = with_tokenizer(tmp_path, hf_model_dir, tj)
    r = subprocess.run([str(build_dir / "bin" / "sparseserve"), "info", "--model", str(d)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert f"the tokenizer has {n + 1} tokens, more than the model's {rows} embedding rows" in r.stderr, r.stderr


def test_generation_config_sampling_defaults(tmp_path, build_dir, hf_model_dir):
    """generation_config auto (vLLM's default): what a request leaves out of temperature, top_p and
    top_k comes from the model's generation_config.json, and its max_new_tokens caps max_tokens;
    generation_config vllm: the API's defaults."""
    import httpx
    from conftest_server import ServerProcess

    gen = json.loads((hf_model_dir / "generation_config.json").read_text())
    d = with_file(tmp_path / "hf", hf_model_dir, "generation_config.json",
                  json.dumps({**gen, "temperature": 0.0, "max_new_tokens": 6}))
    body = {"prompt": "The sea is", "max_tokens": 8, "ignore_eos": True, "seed": 7}

    def texts(mode):
        srv = ServerProcess(build_dir / "bin" / "sparseserve", d, tmp_path / f"server-{mode}.log", generation_config=mode)
        try:
            srv.wait_ready()
            post = lambda extra: httpx.post(srv.base_url + "/v1/completions", json={**body, **extra},
                                            timeout=120).json()["choices"][0]
            choices = post({}), post({"temperature": 0.0}), post({"temperature": 1.0})
            return [c["text"] for c in choices] + [post({"max_tokens": 8})["finish_reason"]]
        finally:
            assert srv.terminate() == 0, srv.log_tail()

    # auto: the file's temperature for what the request leaves out, and its max_new_tokens (6) caps
    # the request's max_tokens (8), as vLLM's get_max_tokens does.
    left_out, greedy, sampled, finish = texts("auto")
    assert left_out == greedy, (left_out, greedy)
    capped = greedy
    left_out, greedy, sampled, finish = texts("vllm")
    assert left_out == sampled, (left_out, sampled)
    assert greedy.startswith(capped) and len(greedy) > len(capped), (capped, greedy)
    assert greedy != sampled  # the seed draws another text at temperature 1 (else the test shows nothing)


def test_dummy_load_format_needs_no_weights(tmp_path, build_dir, hf_model_dir):
    """load_format dummy (as vLLM's): a directory with config.json and the tokenizer files only loads
    with made-up BF16 weights of the config's shapes, and the server answers on them; without dummy
    the same directory is refused, naming the missing weights."""
    import httpx
    from conftest_server import ServerProcess

    d = tmp_path / "config_only"
    d.mkdir()
    for f in hf_model_dir.iterdir():
        if not f.name.endswith(".safetensors") and not f.name.endswith(".safetensors.index.json"):
            (d / f.name).symlink_to(f)
    binary = build_dir / "bin" / "sparseserve"

    def info(*extra):
        return subprocess.run([str(binary), "info", "--json", "--model", str(d), *extra],
                              capture_output=True, text=True, timeout=120)
    refused = info()
    assert refused.returncode != 0 and "safetensors" in refused.stderr, refused.stderr
    got = json.loads(info("--load-format", "dummy").stdout)
    full = json.loads(subprocess.run([str(binary), "info", "--json", "--model", str(hf_model_dir)],
                                     check=True, capture_output=True, text=True, timeout=120).stdout)
    assert got["load_format"] == "dummy" and full["load_format"] == "auto"
    for key in ("layers", "hidden", "heads", "kv_heads", "intermediate", "vocab_size", "chat_template"):
        assert got[key] == full[key], key
    assert got["tensor_types"] == {"BF16": 272}
    assert got["weights_bytes"] * 2 == full["weights_bytes"]  # the fixture's F32, halved

    srv = ServerProcess(binary, d, tmp_path / "server.log", load_format="dummy")
    try:
        srv.wait_ready()
        r = httpx.post(srv.base_url + "/v1/completions", timeout=120,
                       json={"prompt": "Hello", "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 4
        assert "made-up" in srv.log_tail(200)
    finally:
        assert srv.terminate() == 0, srv.log_tail()
