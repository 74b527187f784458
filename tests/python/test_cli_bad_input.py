"""Bad command lines and files: each is refused at once with a clear one-line error naming the option
or file and exit status 1 (CLI11's own parse errors keep its codes), never "unexpected error" or a
hang. Nothing here loads a model for long; the serve tests start servers only up to their first
"serving model" line."""
import json
import os
import signal
import socket
import subprocess
import threading

import pytest
from ports import free_port


def run(tool, *args, timeout=60):
    return subprocess.run([str(tool("sparseserve")), *[str(a) for a in args]], capture_output=True, text=True,
                          timeout=timeout)


def test_unknown_log_level_is_refused_not_silenced(tool, tmp_path):
    r = run(tool, "--log-level", "bogus", "info", "--model", tmp_path / "none.gguf")
    assert r.returncode != 0
    assert "--log-level" in r.stderr and "bogus" in r.stderr, r.stderr


def test_model_paths_the_os_cannot_look_up(tool, tmp_path):
    loop1, loop2 = tmp_path / "loop1", tmp_path / "loop2"
    os.symlink(loop2, loop1)
    os.symlink(loop1, loop2)
    for model in (tmp_path / ("a" * 300), loop1):
        r = run(tool, "info", "--model", model)
        assert r.returncode == 1, (model, r.returncode, r.stderr)
        assert "unexpected error" not in r.stderr and str(model) in r.stderr, r.stderr


def test_fifos_and_folders_are_refused_without_blocking(tool, tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    r = run(tool, "info", "--model", fifo, timeout=20)  # opening a FIFO for reading used to block forever
    assert r.returncode == 1 and "not a regular file" in r.stderr, r.stderr
    config_fifo = tmp_path / "server.yaml"
    os.mkfifo(config_fifo)
    for config, message in ((config_fifo, "not a regular file"), (tmp_path, "a folder, not a file")):
        r = run(tool, "serve", "--config", config, timeout=20)
        assert r.returncode == 1, (config, r.stderr)
        assert message in r.stderr and "unexpected error" not in r.stderr, r.stderr


@pytest.mark.parametrize("seed", ["-1", "18446744073709551616", "1x"])
def test_seeds_outside_uint64_are_refused(tool, model_path, seed):
    # CLI11 alone wrapped -1 to 2^64 - 1 and saturated 2^64; the message was a 300-digit range.
    for cmd in (["generate", "--prompt", "hi", "--max-tokens", "1"], ["calibrate", "--out", "x.tsv"]):
        r = run(tool, cmd[0], "--model", model_path, *cmd[1:], "--seed", seed)
        assert r.returncode != 0 and "--seed: must be an integer in [0, 2^64)" in r.stderr, (cmd, r.stderr)


def test_chat_options_without_chat_are_refused(tool, model_path):
    # --system and --chat-template were silently dropped with --prompt.
    for extra in (["--system", "be brief"], ["--chat-template", "llama3"]):
        r = run(tool, "generate", "--model", model_path, "--prompt", "hi", "--max-tokens", "1", *extra)
        assert r.returncode != 0 and f"{extra[0]} requires --chat" in r.stderr, r.stderr


def test_a_chat_template_whose_tokens_the_model_lacks_is_refused(tool, model_path, tmp_path):
    # Llama-3's markers are not SmolLM2 tokens: prompts spelled them out as text and never stopped.
    r = run(tool, "generate", "--model", model_path, "--chat", "hi", "--max-tokens", "1", "--chat-template", "llama3")
    assert r.returncode == 1, r.stderr
    assert "chat_template llama3: the model's tokenizer has no <|begin_of_text|> <|start_header_id|>" in r.stderr, r.stderr
    yaml = tmp_path / "model.yaml"
    yaml.write_text("name: t\nchat_template: llama3\n")
    r = run(tool, "generate", "--model", model_path, "--chat", "hi", "--max-tokens", "1", "--model-config", yaml)
    assert r.returncode == 1 and "chat_template llama3: the model's tokenizer has no" in r.stderr, r.stderr


# Models whose metadata or weights lie: refused at load with the file and the problem named, at once
# (no buffer sized by the lie first), instead of crashing or allocating gigabytes.
BAD_MODELS = {
    # Sized the per-layer tables before any tensor was looked up: 3.9 GB, or bad_alloc.
    "layer_count": ({"llama.block_count": ("UINT32", 10_000_000)}, None, "number of layers must be in [1, 65536]"),
    "layer_past_the_tensors": ({"llama.block_count": ("UINT32", 31)}, None, "missing tensor 'blk.30.attn_norm.weight'"),
    # Loaded, then aborted the server at the first forward pass (a throw inside OpenMP).
    "weight_type": (None, {"blk.0.attn_q.weight": "I32"}, "tensor 'blk.0.attn_q.weight' has type I32"),
    "rope_scaling_factor": ({"llama.rope.scaling.type": ("STRING", "linear"), "llama.rope.scaling.factor": ("FLOAT32", 0.0)},
                            None, "RoPE scaling factor must be positive and finite"),
    "rms_eps": ({"llama.attention.layer_norm_rms_epsilon": ("FLOAT32", float("inf"))}, None,
                "RMSNorm epsilon must be positive and finite"),
    # A stop id past the vocabulary: the first request that masked stops wrote past the logits (SIGSEGV).
    "eot_id": ({"tokenizer.ggml.eot_token_id": ("UINT32", 5_000_000)}, None,
               "end-of-sequence token id 5000000 is outside the vocabulary of 49152"),
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_lying_models_are_refused_at_load(tool, model_path, tmp_path, case):
    from gguf import GGMLQuantizationType, GGUFValueType
    from gguf_rewrite import rewrite_gguf

    metadata, types, needle = BAD_MODELS[case]
    metadata = {k: (GGUFValueType[t], v) for k, (t, v) in (metadata or {}).items()}
    types = {k: GGMLQuantizationType[t] for k, t in (types or {}).items()}
    bad = rewrite_gguf(model_path, tmp_path / "bad.gguf", metadata, types)
    r = run(tool, "info", "--model", bad, timeout=30)
    assert r.returncode == 1, r.stdout + r.stderr
    assert needle in r.stderr and "bad.gguf" in r.stderr, r.stderr


def test_info_json_survives_bytes_that_are_not_utf8(tool, model_path, tmp_path):
    # general.name is bytes, not always UTF-8: `info --json` replaces what is not (it exited 2).
    from gguf import GGUFValueType
    from gguf_rewrite import rewrite_gguf

    bad = rewrite_gguf(model_path, tmp_path / "name.gguf", {"general.name": (GGUFValueType.STRING, b"A\xffB")})
    r = run(tool, "info", "--json", "--model", bad, timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["name"] == "A\ufffdB"


def test_serve_finds_a_taken_grpc_port_and_a_useless_kv_cache_before_serving(tool, model_path):
    # A taken gRPC port was found only after the model had loaded (gRPC binds with the engine), with
    # gRPC's own error dump; a KV cache holding no sequence made a server that refused every request.
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run(tool, "serve", "--model", model_path, "--host", "127.0.0.1", "--http-port", free_port(), "--grpc-port", port)
    assert r.returncode == 1, r.stderr
    assert f"gRPC: cannot listen on 127.0.0.1:{port}" in r.stderr and "] loaded " not in r.stderr, r.stderr
    r = run(tool, "serve", "--model", model_path, "--host", "127.0.0.1", "--http-port", free_port(), "--grpc-port", "0",
            "--kv-cache-bytes", "100KiB")
    assert r.returncode == 1 and "holds no sequence of two tokens under the default profile 'dense'" in r.stderr, r.stderr


def serve_start_log(tool, model_path, kv_cache_bytes, timeout=60):
    """The log of `serve` up to its "serving model" line, which must come within timeout s; the
    server is then stopped."""
    p = subprocess.Popen([str(tool("sparseserve")), "serve", "--model", str(model_path), "--host", "127.0.0.1",
                          "--http-port", str(free_port()), "--grpc-port", "0", "--kv-cache-bytes", str(kv_cache_bytes)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(timeout, p.kill)  # a server that never gets there ends the read
    timer.start()
    try:
        log = ""
        for line in p.stdout:
            log += line
            if "serving model" in line:
                break
        assert "serving model" in log, log
        return log
    finally:
        timer.cancel()
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)


def test_serve_says_at_start_when_the_kv_cache_holds_less_than_the_context(tool, model_path):
    # 8 MiB: 240 pages of the dense profile's 90 lanes, two 64-token blocks.
    log = serve_start_log(tool, model_path, "8MiB")
    assert "holds one sequence of at most 128 tokens under the default profile 'dense', under the model's " \
           "context of 8192" in log, log
    # `info` names the cache one full-context sequence needs in the CPU engine (it once gave the bf16
    # figure, 43% under): exactly that much holds the context, a byte less does not.
    info = json.loads(run(tool, "info", "--json", "--model", model_path).stdout)
    need = info["kv_bytes_full_context_cpu_engine"]
    assert need > info["kv_bytes_full_context_bf16"]
    assert "holds one sequence" not in serve_start_log(tool, model_path, need)
    assert "holds one sequence of at most 8128 tokens" in serve_start_log(tool, model_path, need - 1)
