"""The gRPC API (proto/sparseserve.proto) against the real server binary on loopback.

Python stubs are generated from the .proto at test time (grpc_tools.protoc into a temporary folder);
nothing generated is committed. The server is `build/bin/sparseserve serve` with the default model
and its sparsity profiles on free loopback ports: one for most tests, one with an API key, one that
is stopped mid-stream. SPARSESERVE_BUILD / SPARSESERVE_MODEL choose the binary and model (conftest.py).
"""
from __future__ import annotations

import importlib
import json
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ports import free_port

grpc = pytest.importorskip("grpc")
pytest.importorskip("grpc_tools")

MODEL_CONFIG = "configs/models/smollm2-135m-instruct.yaml"
PROMPT = "The capital of France is"
START_TIMEOUT_S = 60
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20),
                   ("grpc.max_send_message_length", 64 << 20)]


# ------------------------------------------------------------------------------------------------
# Stubs and server fixtures

@pytest.fixture(scope="module")
def api(repo_root, tmp_path_factory):
    """(pb, rpc): the generated message and stub modules."""
    out = tmp_path_factory.mktemp("grpc_stubs")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{repo_root / 'proto'}",
                    f"--python_out={out}", f"--grpc_python_out={out}",
                    str(repo_root / "proto" / "sparseserve.proto")], check=True)
    sys.path.insert(0, str(out))
    try:
        pb = importlib.import_module("sparseserve_pb2")
        rpc = importlib.import_module("sparseserve_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return pb, rpc


class ServerProcess:
    """A `sparseserve serve` process with a stub on its gRPC port."""

    def __init__(self, binary: Path, model: Path, repo_root: Path, log: Path, rpc, pb, **flags):
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.rpc, self.pb = rpc, pb
        self.log = log
        cmd = [str(binary), "serve", "--model", str(model), "--model-config", str(repo_root / MODEL_CONFIG),
               "--host", "127.0.0.1", "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port)]
        for key, value in {"kv_cache_bytes": "256MiB", "shutdown_grace_seconds": 5, **flags}.items():
            cmd += ["--" + key.replace("_", "-"), str(value)]
        self._log = log.open("wb")
        self.proc = subprocess.Popen(cmd, cwd=repo_root, stdout=self._log, stderr=subprocess.STDOUT)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}", options=CHANNEL_OPTIONS)
        self.stub = rpc.SparseServeStub(self.channel)
        self._wait_serving()

    def _wait_serving(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.fail(f"the server exited with {self.proc.returncode} while starting")
            try:
                # wait_for_ready: a fail-fast call would keep failing on the channel's cached
                # connection error from before the server listened.
                health = self.stub.Health(self.pb.HealthRequest(), timeout=1, wait_for_ready=True)
                if health.status == self.pb.HealthResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        self.fail(f"gRPC Health was not SERVING within {START_TIMEOUT_S} s")

    def fail(self, why: str):
        self.stop()
        tail = self.log.read_text(errors="replace")[-3000:]
        pytest.fail(f"{why}; server log:\n{tail}")

    def stop(self):
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def launch_server(build_dir, model_path, repo_root, tmp_path_factory, api, **flags) -> ServerProcess:
    """A ready server; flags (YAML key names) are added to the command line."""
    binary = build_dir / "bin" / "sparseserve"
    if not binary.is_file():
        pytest.fail(f"{binary} is not built: ninja -C {build_dir} sparseserve")
    pb, rpc = api
    log = tmp_path_factory.mktemp("grpc_server") / "server.log"
    return ServerProcess(binary, model_path, repo_root, log, rpc, pb, **flags)


@pytest.fixture(scope="module")
def grpc_server(build_dir, model_path, repo_root, tmp_path_factory, api):
    s = launch_server(build_dir, model_path, repo_root, tmp_path_factory, api)
    yield s
    s.stop()
    assert s.proc.returncode == 0, f"the server exited with {s.proc.returncode} on SIGTERM"


@pytest.fixture(scope="module")
def pb(api):
    return api[0]


@pytest.fixture(scope="module")
def stub(grpc_server):
    return grpc_server.stub


@pytest.fixture(scope="module")
def model_info(stub, pb):
    return stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)


# ------------------------------------------------------------------------------------------------
# Helpers

def greedy(pb, max_tokens=8, **kw):
    """A greedy request; the prompt is PROMPT unless token_ids or chat is given."""
    if "token_ids" not in kw and "chat" not in kw:
        kw.setdefault("text", PROMPT)
    return pb.GenerateRequest(max_tokens=max_tokens, sampling=pb.SamplingParams(temperature=0), **kw)


def collect(stub, req, timeout=60):
    """All messages of one Generate call; checks that exactly the last one carries `final`."""
    msgs = list(stub.Generate(req, timeout=timeout))
    assert msgs, "empty stream"
    assert msgs[-1].HasField("final")
    assert not any(m.HasField("final") for m in msgs[:-1])
    assert len({m.request_id for m in msgs}) == 1
    return msgs


def tokens_of(msgs):
    return [t for m in msgs for t in m.token_ids]


def text_of(msgs):
    return "".join(m.text for m in msgs)


def expect_invalid(stub, req, *needles):
    with pytest.raises(grpc.RpcError) as e:
        collect(stub, req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    details = e.value.details()
    for needle in needles:
        assert needle in details, f"{needle!r} not in {details!r}"
    return details


def wait_idle(stub, pb, timeout=15.0):
    """Polls GetServerInfo until no request runs or waits and no KV page is held."""
    deadline = time.monotonic() + timeout
    info = None
    while time.monotonic() < deadline:
        info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=5)
        if info.requests_running == 0 and info.requests_waiting == 0 and info.kv_pages_in_use == 0:
            return info
        time.sleep(0.05)
    pytest.fail(f"the engine did not become idle within {timeout} s: {info}")


# ------------------------------------------------------------------------------------------------
# Health, model info, tokenizer

def test_health_serving(stub, pb):
    assert stub.Health(pb.HealthRequest(), timeout=5).status == pb.HealthResponse.SERVING


def test_standard_health_and_reflection_services(grpc_server):
    # Hand-encoded protobuf, so no extra package is needed: grpc.health.v1 HealthCheckRequest{} ->
    # HealthCheckResponse{status: SERVING (field 1 = 1)}; reflection ServerReflectionRequest
    # {list_services: ""} (field 7) -> a response naming every service.
    raw = dict(request_serializer=lambda b: b, response_deserializer=lambda b: b)
    check = grpc_server.channel.unary_unary("/grpc.health.v1.Health/Check", **raw)
    assert check(b"", timeout=5) == b"\x08\x01"
    # By the service's full name too (HealthCheckRequest{service: name}, field 1), as probes ask.
    name = b"sparseserve.v1.SparseServe"
    assert check(b"\x0a" + bytes([len(name)]) + name, timeout=5) == b"\x08\x01"
    info = grpc_server.channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", **raw)
    listing = b"".join(info(iter([b"\x3a\x00"]), timeout=5))
    assert b"sparseserve.v1.SparseServe" in listing


def test_model_info(model_info):
    m = model_info
    assert (m.architecture, m.format) == ("llama", "gguf")
    assert (m.num_layers, m.num_heads, m.num_kv_heads, m.head_dim) == (30, 9, 3, 64)
    assert (m.hidden_size, m.vocab_size, m.context_length) == (576, 49152, 8192)
    assert m.name == "smollm2-135m-instruct"
    assert m.chat_template == "chatml"
    assert m.end_of_turn_token_id >= 0
    assert m.page_tokens == 64
    profiles = {p.name: p for p in m.profiles}
    assert {"dense", "balanced", "streaming-only", "select-512"} <= set(profiles)
    assert [p.name for p in m.profiles] == sorted(profiles)
    assert m.default_profile == "balanced"
    assert profiles["dense"].dense and profiles["dense"].streaming_kv_heads == 0
    b = profiles["balanced"]
    assert not b.dense and b.streaming_kv_heads > 0
    assert (b.sink_tokens, b.local_tokens, b.decode_token_budget) == (64, 256, 0)
    assert profiles["select-512"].decode_token_budget == 512
    assert profiles["streaming-only"].decode_token_budget == 0


def test_tokenize_detokenize_round_trip(stub, pb):
    text = "Hello, world! Ünïcödé text, 你好, emoji 🙂 and <|im_end|> as plain text."
    ids = list(stub.Tokenize(pb.TokenizeRequest(text=text, parse_special=False), timeout=5).token_ids)
    assert len(ids) > 10
    assert stub.Detokenize(pb.DetokenizeRequest(token_ids=ids, skip_special=True), timeout=5).text == text
    # By default (as Generate encodes text) the marker becomes its single id; skip_special then drops it.
    special = list(stub.Tokenize(pb.TokenizeRequest(text="<|im_end|>"), timeout=5).token_ids)
    assert len(special) == 1
    assert stub.Detokenize(pb.DetokenizeRequest(token_ids=special), timeout=5).text == "<|im_end|>"
    assert stub.Detokenize(pb.DetokenizeRequest(token_ids=special, skip_special=True), timeout=5).text == ""


def test_detokenize_unknown_id(stub, pb, model_info):
    with pytest.raises(grpc.RpcError) as e:
        stub.Detokenize(pb.DetokenizeRequest(token_ids=[1, model_info.vocab_size]), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(model_info.vocab_size) in e.value.details()


# ------------------------------------------------------------------------------------------------
# Generate

def test_generate_text_and_token_ids_agree(stub, pb):
    ids = list(stub.Tokenize(pb.TokenizeRequest(text=PROMPT), timeout=5).token_ids)
    by_text = collect(stub, greedy(pb, text=PROMPT))
    by_ids = collect(stub, greedy(pb, token_ids=pb.TokenIds(ids=ids)))
    assert tokens_of(by_text) == tokens_of(by_ids)
    assert text_of(by_text) == text_of(by_ids)
    for msgs in (by_text, by_ids):
        usage = msgs[-1].final.usage
        assert usage.prompt_tokens == len(ids)
        assert usage.completion_tokens == len(tokens_of(msgs))


def test_greedy_is_deterministic_under_concurrency(stub, pb):
    results = [None] * 3

    def run(i):
        results[i] = tokens_of(collect(stub, greedy(pb, max_tokens=12)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] and results[0] == results[1] == results[2]


def test_seeded_sampling_is_reproducible(stub, pb):
    req = pb.GenerateRequest(text=PROMPT, max_tokens=8, sampling=pb.SamplingParams(temperature=1.0, seed=1234))
    assert tokens_of(collect(stub, req)) == tokens_of(collect(stub, req))


def test_stream_deltas_concatenate_to_the_full_text(stub, pb):
    msgs = collect(stub, greedy(pb, max_tokens=16, ignore_eos=True))
    ids = tokens_of(msgs)
    assert len(ids) == 16
    assert sum(1 for m in msgs if m.token_ids) > 1, "expected several deltas"
    full = stub.Detokenize(pb.DetokenizeRequest(token_ids=ids, skip_special=True), timeout=5).text
    assert text_of(msgs) == full


def test_stop_string_cuts_the_output(stub, pb):
    full = text_of(collect(stub, greedy(pb, max_tokens=16, ignore_eos=True)))
    assert len(full) > 8
    stop = full[len(full) // 2: len(full) // 2 + 3]
    msgs = collect(stub, greedy(pb, max_tokens=16, ignore_eos=True, stop=[stop]))
    assert text_of(msgs) == full[:full.find(stop)]
    final = msgs[-1].final
    assert final.finish_reason == pb.FINISH_REASON_STOP
    assert final.stop_reason == stop


def test_min_tokens_holds_off_stops(stub, pb):
    # A stop_token_ids entry forced by logit_bias at every step ends the stream only once min_tokens
    # tokens are out; min_tokens past max_tokens is refused.
    comma = list(stub.Tokenize(pb.TokenizeRequest(text=","), timeout=10).token_ids)
    assert len(comma) == 1
    forced = pb.SamplingParams(temperature=0, logit_bias={comma[0]: 100})
    msgs = collect(stub, pb.GenerateRequest(text="Hi", max_tokens=8, sampling=forced, stop_token_ids=comma,
                                            min_tokens=3))
    tokens = tokens_of(msgs)
    assert len(tokens) == 4 and tokens[3] == comma[0] and comma[0] not in tokens[:3], tokens
    assert msgs[-1].final.finish_reason == pb.FINISH_REASON_STOP
    expect_invalid(stub, pb.GenerateRequest(text="Hi", max_tokens=4, min_tokens=5), "min_tokens")


def test_allowed_token_ids_and_truncate_prompt_tokens(stub, pb):
    comma = list(stub.Tokenize(pb.TokenizeRequest(text=","), timeout=10).token_ids)
    msgs = collect(stub, greedy(pb, max_tokens=5, ignore_eos=True, allowed_token_ids=comma))
    assert tokens_of(msgs) == comma * 5
    ids = list(stub.Tokenize(pb.TokenizeRequest(text="One two three four five six seven eight"), timeout=10).token_ids)
    cut = collect(stub, greedy(pb, token_ids=pb.TokenIds(ids=ids), truncate_prompt_tokens=3))
    alone = collect(stub, greedy(pb, token_ids=pb.TokenIds(ids=ids[-3:])))
    assert cut[-1].final.usage.prompt_tokens == 3
    assert tokens_of(cut) == tokens_of(alone)
    expect_invalid(stub, greedy(pb, truncate_prompt_tokens=0), "truncate_prompt_tokens")
    expect_invalid(stub, greedy(pb, allowed_token_ids=[-1]), "allowed_token_ids")
    # Choices no allowed id can write: the request stops with INVALID_ARGUMENT (it drew EOS as text).
    maybe = list(stub.Tokenize(pb.TokenizeRequest(text=" maybe", add_special=False), timeout=10).token_ids)
    assert len(maybe) == 1
    expect_invalid(stub, greedy(pb, choices=["yes", "no"], allowed_token_ids=maybe), "no token is left to sample")


def test_bad_words(stub, pb):
    free = text_of(collect(stub, greedy(pb, max_tokens=12)))
    assert "Paris" in free, free
    banned = text_of(collect(stub, greedy(pb, max_tokens=12, bad_words=["Paris"])))
    assert "Paris" not in banned, banned
    expect_invalid(stub, greedy(pb, bad_words=[" "]), "bad_words")


def test_json_object(stub, pb):
    # Each answer that ends by itself is one JSON object (Python's json module reads it); the rest
    # are cut by max_tokens, inside one.
    chat = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="Describe a dog as a JSON object.")])
    stopped = 0
    for seed in range(4):
        req = pb.GenerateRequest(chat=chat, max_tokens=160, json_object=True,
                                 sampling=pb.SamplingParams(temperature=1.0, seed=seed))
        msgs = collect(stub, req)
        text = text_of(msgs)
        assert text.lstrip().startswith("{"), text
        if msgs[-1].final.finish_reason == pb.FINISH_REASON_STOP:
            assert isinstance(json.loads(text), dict), text
            stopped += 1
        else:
            assert msgs[-1].final.finish_reason == pb.FINISH_REASON_LENGTH
    assert stopped >= 1


def test_json_schema(stub, pb):
    jsonschema = pytest.importorskip("jsonschema")
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "kind": {"enum": ["dog", "cat"]},
                                               "legs": {"type": "integer"}},
              "required": ["name", "kind", "legs"]}
    chat = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="Describe a pet as JSON.")])
    stopped = 0
    for seed in range(3):
        msgs = collect(stub, pb.GenerateRequest(chat=chat, max_tokens=120, json_schema=json.dumps(schema),
                                                sampling=pb.SamplingParams(temperature=1.0, seed=seed)))
        if msgs[-1].final.finish_reason == pb.FINISH_REASON_STOP:
            value = json.loads(text_of(msgs))
            jsonschema.validate(value, schema)
            assert set(value) == {"name", "kind", "legs"}  # no other key
            stopped += 1
    assert stopped >= 2
    expect_invalid(stub, greedy(pb, json_schema='{"type": "string", "pattern": "(x)\\\\1"}'), "backreferences")
    expect_invalid(stub, greedy(pb, json_schema="{", json_object=False), "not valid JSON")
    deep = '{"enum": [' + "[" * 100_000 + "]" * 100_000 + "]}"  # would overflow the stack written out
    expect_invalid(stub, greedy(pb, json_schema=deep), "deeper than 256")
    expect_invalid(stub, greedy(pb, json_schema='{"type": "object"}', json_object=True), "exclude each other")


def test_choices(stub, pb):
    chat = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="What is the capital of Germany?")])
    choices = ["Paris", "London", "Berlin"]
    for seed in range(3):
        msgs = collect(stub, pb.GenerateRequest(chat=chat, max_tokens=20, choices=choices,
                                                sampling=pb.SamplingParams(temperature=1.0, seed=seed)))
        assert text_of(msgs) in choices and msgs[-1].final.finish_reason == pb.FINISH_REASON_STOP, text_of(msgs)
    expect_invalid(stub, greedy(pb, choices=["a", ""]), "empty choice")
    expect_invalid(stub, greedy(pb, choices=["a"], json_object=True), "exclude")


def test_regex(stub, pb):
    chat = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="Give me a version number.")])
    pattern = r"v\d{1,2}\.\d{1,2}\.\d{1,3}(-(alpha|beta|rc)\d?)?"
    for seed in range(3):
        msgs = collect(stub, pb.GenerateRequest(chat=chat, max_tokens=30, regex=pattern,
                                                sampling=pb.SamplingParams(temperature=1.0, seed=seed)))
        assert re.fullmatch(pattern, text_of(msgs)) and msgs[-1].final.finish_reason == pb.FINISH_REASON_STOP, \
            text_of(msgs)
    expect_invalid(stub, greedy(pb, regex=r"(a)\1"), "backreferences")
    expect_invalid(stub, greedy(pb, regex="a", choices=["a"]), "exclude")


def test_grammar(stub, pb):
    # GBNF (vLLM's guided_grammar; engine/grammar.h): nested parentheses around digits, which no regex
    # states; the check below counts depth independently.
    grammar = ('root ::= item (" " item){0,3}\nitem ::= [0-9] | "(" inner (" " inner)? ")"\n'
               'inner ::= [0-9] | "(" [0-9] (" " [0-9])? ")"\n')  # at most two levels: short answers
    chat = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="Group some digits.")])

    def well_formed(text):
        depth = 0
        for ch in text:
            depth += ch == "("
            depth -= ch == ")"
            if depth < 0 or not (ch.isdigit() or ch in "() "):
                return False
        return depth == 0 and text != "" and "  " not in text and text == text.strip()

    for seed in range(3):
        msgs = collect(stub, pb.GenerateRequest(chat=chat, max_tokens=60, grammar=grammar,
                                                sampling=pb.SamplingParams(temperature=1.0, seed=seed)))
        assert well_formed(text_of(msgs)) and msgs[-1].final.finish_reason == pb.FINISH_REASON_STOP, text_of(msgs)
    expect_invalid(stub, greedy(pb, grammar="root ::= root \"a\" | \"a\""), "left-recursive")
    expect_invalid(stub, greedy(pb, grammar="root ::= \"a\"", regex="a"), "exclude")


def test_prompt_logprobs(stub, pb):
    # In the first message: one entry per prompt token after the first, its id the prompt token's,
    # with the asked-for top tokens; the same values greedy decoding reports for those tokens when
    # they are generated (position 1's prediction is the logprob of prompt token 1).
    ids = list(stub.Tokenize(pb.TokenizeRequest(text=PROMPT), timeout=10).token_ids)
    msgs = collect(stub, greedy(pb, max_tokens=2, prompt_logprobs=3))
    first = msgs[0].prompt_logprobs
    assert [e.token_id for e in first] == ids[1:]
    assert all(len(e.top) == 3 and e.logprob <= 0 and e.rank >= 1 for e in first)
    assert all((e.rank <= 3) == (e.token_id in [t.token_id for t in e.top]) for e in first)
    assert not any(m.prompt_logprobs for m in msgs[1:])
    # The logprob of the first generated token given the whole prompt equals the prompt logprob of
    # that token when it ends a longer prompt.
    gen = collect(stub, greedy(pb, max_tokens=1, logprobs=0))
    tok = tokens_of(gen)[0]
    longer = collect(stub, greedy(pb, token_ids=pb.TokenIds(ids=ids + [tok]), max_tokens=1, prompt_logprobs=0))
    assert abs(longer[0].prompt_logprobs[-1].logprob - gen[0].logprobs[0].logprob) < 1e-4
    expect_invalid(stub, greedy(pb, prompt_logprobs=21), "prompt_logprobs")


def test_max_tokens_finishes_with_length(stub, pb):
    msgs = collect(stub, greedy(pb, max_tokens=5, ignore_eos=True))
    assert len(tokens_of(msgs)) == 5
    assert msgs[-1].final.finish_reason == pb.FINISH_REASON_LENGTH
    assert msgs[-1].final.usage.completion_tokens == 5


def test_max_tokens_zero(stub, pb):
    msgs = collect(stub, greedy(pb, max_tokens=0))
    assert tokens_of(msgs) == []
    assert msgs[-1].final.finish_reason == pb.FINISH_REASON_LENGTH


def test_logprobs(stub, pb):
    msgs = collect(stub, greedy(pb, max_tokens=6, ignore_eos=True, logprobs=3))
    ids = tokens_of(msgs)
    lps = [lp for m in msgs for lp in m.logprobs]
    assert [lp.token_id for lp in lps] == ids
    for lp in lps:
        assert lp.logprob <= 1e-6
        assert len(lp.top) == 3
        assert [t.logprob for t in lp.top] == sorted((t.logprob for t in lp.top), reverse=True)
        # Greedy: the sampled token is the most likely one.
        assert lp.top[0].token_id == lp.token_id
        assert lp.top[0].logprob == pytest.approx(lp.logprob, abs=1e-4)
    joined = b"".join(lp.token for lp in lps).decode("utf-8", errors="replace")
    assert joined == text_of(msgs)
    # Without logprobs none are sent.
    assert not any(m.logprobs for m in collect(stub, greedy(pb, max_tokens=2)))


def test_chat_messages(stub, pb, model_info):
    req = pb.GenerateRequest(chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="Say hello.")]),
                             max_tokens=12, sampling=pb.SamplingParams(temperature=0))
    msgs = collect(stub, req)
    assert msgs[-1].final.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    assert model_info.end_of_turn_token_id not in tokens_of(msgs)
    assert "<|im_end|>" not in text_of(msgs)
    # The template wraps the message: the prompt is longer than the message alone.
    assert msgs[-1].final.usage.prompt_tokens > 10


def test_sparsity_profiles(stub, pb, model_info):
    for profile in ("dense", "balanced", "streaming-only", ""):
        msgs = collect(stub, greedy(pb, max_tokens=4, sparsity=profile))
        assert len(tokens_of(msgs)) > 0
    details = expect_invalid(stub, greedy(pb, sparsity="no-such-profile"), "no-such-profile")
    assert "balanced" in details  # the known names are listed


def test_request_id_is_echoed_and_generated(stub, pb):
    msgs = collect(stub, greedy(pb, max_tokens=2, request_id="my-id-1"))
    assert msgs[0].request_id == "my-id-1"
    call = stub.Generate(greedy(pb, max_tokens=2), timeout=30)
    header = dict(call.initial_metadata())
    msgs = list(call)
    assert header["x-request-id"].startswith("grpc-")
    assert msgs[0].request_id == header["x-request-id"]


@pytest.mark.parametrize("case", [
    "negative_max_tokens", "negative_temperature", "top_p_zero", "empty_text", "empty_token_ids",
    "no_input", "unknown_token_id", "context_overflow", "completion_over_context", "logprobs_too_many",
    "negative_logprobs", "empty_stop", "too_many_stops",
    "bad_stop_token_id", "bad_logit_bias_id", "bad_chat_role", "long_request_id",
    "non_ascii_request_id", "newline_request_id", "max_tokens_near_int64_max", "temperature_over_two",
])
def test_bad_inputs_are_invalid_argument(stub, pb, model_info, case):
    V, C = model_info.vocab_size, model_info.context_length
    reqs = {
        "negative_max_tokens": (greedy(pb, max_tokens=-1), ["max_tokens"]),
        "negative_temperature": (pb.GenerateRequest(text=PROMPT, sampling=pb.SamplingParams(temperature=-1)),
                                 ["temperature"]),
        "top_p_zero": (pb.GenerateRequest(text=PROMPT, sampling=pb.SamplingParams(top_p=0)), ["top_p"]),
        "empty_text": (pb.GenerateRequest(text=""), ["empty"]),
        "empty_token_ids": (pb.GenerateRequest(token_ids=pb.TokenIds(ids=[])), ["empty"]),
        "no_input": (pb.GenerateRequest(max_tokens=4), ["input"]),
        "unknown_token_id": (pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, V])), [str(V)]),
        "context_overflow": (pb.GenerateRequest(token_ids=pb.TokenIds(ids=[100] * (C + 10))), [str(C), str(C + 10)]),
        "completion_over_context": (greedy(pb, max_tokens=C), [str(C), "max_tokens"]),
        "logprobs_too_many": (greedy(pb, logprobs=21), ["logprobs"]),
        "negative_logprobs": (greedy(pb, logprobs=-1), ["logprobs"]),
        "empty_stop": (greedy(pb, stop=[""]), ["stop"]),
        "too_many_stops": (greedy(pb, stop=[f"s{i}" for i in range(17)]), ["stop"]),
        "bad_stop_token_id": (greedy(pb, stop_token_ids=[-5]), ["-5"]),
        "bad_logit_bias_id": (pb.GenerateRequest(text=PROMPT, sampling=pb.SamplingParams(logit_bias={V + 1: 1.0})),
                              ["logit_bias"]),
        "bad_chat_role": (pb.GenerateRequest(chat=pb.ChatMessages(messages=[pb.ChatMessage(role="wizard", content="x")])),
                          ["wizard"]),
        "long_request_id": (greedy(pb, request_id="x" * 300), ["request_id"]),
        # The id goes back as a header: gRPC aborted the whole server on a value not printable ASCII.
        "non_ascii_request_id": (greedy(pb, request_id="caf\u00e9"), ["request_id", "ASCII"]),
        "newline_request_id": (greedy(pb, request_id="a\nb"), ["request_id", "ASCII"]),
        # prompt + max_tokens overflowed int64 and passed the context check.
        "max_tokens_near_int64_max": (greedy(pb, max_tokens=2**63 - 1), [str(C), "max_tokens"]),
        # As over HTTP (OpenAI's range); the engine alone allowed up to 100.
        "temperature_over_two": (pb.GenerateRequest(text=PROMPT, sampling=pb.SamplingParams(temperature=50)),
                                 ["temperature", "[0, 2]"]),
    }
    req, needles = reqs[case]
    expect_invalid(stub, req, *needles)


def test_server_limits_hold_for_grpc_too(build_dir, model_path, repo_root, tmp_path_factory, api):
    # max_prompt_tokens and max_body_bytes, which the HTTP side enforces, hold for gRPC as well.
    s = launch_server(build_dir, model_path, repo_root, tmp_path_factory, api, max_prompt_tokens=100,
                      max_body_bytes="1MiB")
    try:
        pb = s.pb
        expect_invalid(s.stub, pb.GenerateRequest(text="hello " * 300, max_tokens=1), "more than this server accepts",
                       "100 tokens")
        with pytest.raises(grpc.RpcError) as e:
            collect(s.stub, pb.GenerateRequest(text="x" * (2 << 20), max_tokens=1))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
        assert tokens_of(collect(s.stub, pb.GenerateRequest(text="hello " * 50, max_tokens=1)))
    finally:
        s.stop()


def test_a_detokenize_text_past_the_reply_limit_is_invalid_argument(build_dir, model_path, repo_root,
                                                                    tmp_path_factory, api):
    # 1.1M tokens of 64 spaces: 70 MB of text, past the 64 MiB a reply holds. It was gRPC's own
    # RESOURCE_EXHAUSTED ("Sent message larger than max"), which the schema gives for "retry later".
    s = launch_server(build_dir, model_path, repo_root, tmp_path_factory, api, max_body_bytes="8MiB")
    try:
        pb = s.pb
        spaces = list(s.stub.Tokenize(pb.TokenizeRequest(text=" " * 64, add_special=False), timeout=5).token_ids)
        assert len(spaces) == 1
        with pytest.raises(grpc.RpcError) as e:
            s.stub.Detokenize(pb.DetokenizeRequest(token_ids=spaces * 1_100_000), timeout=120)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
        assert "over the 64 MiB a reply may hold" in e.value.details(), e.value.details()
        assert len(s.stub.Detokenize(pb.DetokenizeRequest(token_ids=spaces * 1000), timeout=30).text) == 64000
    finally:
        s.stop()


def test_a_kv_cache_under_the_context_limits_grpc_as_http(build_dir, model_path, repo_root, tmp_path_factory, api):
    # 8 MiB holds one dense sequence of 128 tokens: prompt + max_tokens over it is refused, as over
    # HTTP, and GetModelInfo's context_length is the default profile's limit (HTTP's max_model_len).
    s = launch_server(build_dir, model_path, repo_root, tmp_path_factory, api, kv_cache_bytes="8MiB")
    try:
        pb = s.pb
        info = s.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
        assert 128 <= info.context_length < 8192
        expect_invalid(s.stub, pb.GenerateRequest(text="Story 1:", max_tokens=150, sparsity="dense"),
                       "maximum context length is 128 tokens", "'dense'")
        expect_invalid(s.stub, pb.GenerateRequest(text="word " * 200, max_tokens=0, sparsity="dense"),
                       "maximum context length is 128 tokens")
        out = collect(s.stub, pb.GenerateRequest(text="Story 1:", max_tokens=100, sparsity="dense", ignore_eos=True))
        assert len(tokens_of(out)) == 100
    finally:
        s.stop()


def test_server_survives_bad_inputs(stub, pb):
    # After every rejection above, ordinary calls still work and nothing is left running.
    assert tokens_of(collect(stub, greedy(pb, max_tokens=2)))
    wait_idle(stub, pb)


# ------------------------------------------------------------------------------------------------
# Abort and cancellation

def long_request(pb, request_id=None):
    kw = {"request_id": request_id} if request_id else {}
    return greedy(pb, max_tokens=4000, ignore_eos=True, **kw)


def test_abort_ends_the_stream_with_abort(stub, pb):
    call = stub.Generate(long_request(pb, "abort-me"), timeout=60)
    it = iter(call)
    first = next(it)
    assert first.request_id == "abort-me"
    # A second live request with the same id is refused.
    expect_invalid(stub, greedy(pb, max_tokens=2, request_id="abort-me"), "abort-me")
    assert stub.Abort(pb.AbortRequest(request_id="abort-me"), timeout=5).found
    rest = list(it)
    assert rest and rest[-1].HasField("final")
    assert rest[-1].final.finish_reason == pb.FINISH_REASON_ABORT
    assert rest[-1].final.usage.completion_tokens < 4000
    wait_idle(stub, pb)
    assert not stub.Abort(pb.AbortRequest(request_id="abort-me"), timeout=5).found
    assert not stub.Abort(pb.AbortRequest(request_id="never-seen"), timeout=5).found


def test_client_cancel_frees_the_request(stub, pb):
    call = stub.Generate(long_request(pb), timeout=60)
    it = iter(call)
    next(it)
    next(it)
    info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=5)
    assert info.requests_running >= 1 and info.kv_pages_in_use > 0
    call.cancel()
    with pytest.raises(grpc.RpcError) as e:
        list(it)
    assert e.value.code() == grpc.StatusCode.CANCELLED
    wait_idle(stub, pb)


class NeverReadingClient:
    """A bare HTTP/2 connection that grants no flow-control window (SETTINGS_INITIAL_WINDOW_SIZE 0):
    a client that never reads its replies, which no gRPC library lets one write."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        settings = struct.pack(">HI", 4, 0) + struct.pack(">HI", 2, 0)  # window 0, no push
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + self._frame(4, 0, 0, settings))

    @staticmethod
    def _frame(kind, flags, stream, payload):
        return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload

    @staticmethod
    def _header(name, value):  # HPACK literal without indexing, names and values under 127 bytes
        return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()

    def generate(self, request, stream=1):
        block = b"".join(self._header(k, v) for k, v in [
            (":method", "POST"), (":scheme", "http"), (":path", "/sparseserve.v1.SparseServe/Generate"),
            (":authority", "localhost"), ("content-type", "application/grpc"), ("te", "trailers")])
        body = request.SerializeToString()
        self.sock.sendall(self._frame(1, 4, stream, block) +  # HEADERS, END_HEADERS
                          self._frame(0, 1, stream, b"\x00" + struct.pack(">I", len(body)) + body))  # DATA, END_STREAM

    def close(self):
        self.sock.close()


def test_a_client_that_stops_reading_is_cancelled(build_dir, model_path, repo_root, tmp_path_factory, api):
    # The server's writes to a client that reads nothing block; the watchdog cancels the call after
    # grpc_write_stall_seconds, which frees the request and the server thread blocked in the write.
    pb = api[0]
    s = launch_server(build_dir, model_path, repo_root, tmp_path_factory, api, grpc_write_stall_seconds=1)
    client = NeverReadingClient(s.grpc_port)
    try:
        client.generate(long_request(pb))
        deadline = time.monotonic() + 10
        while s.stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=5).requests_running == 0:
            assert time.monotonic() < deadline, "the unread call never started"
            time.sleep(0.05)
        wait_idle(s.stub, pb, timeout=20)  # cancelled, though its connection is still open
        assert "cancelling its call" in s.log.read_text(errors="replace")
        collect(s.stub, greedy(pb, max_tokens=2))  # the server goes on serving
    finally:
        client.close()
        s.stop()


def test_client_deadline_frees_the_request(stub, pb):
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Generate(long_request(pb), timeout=1.0))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_idle(stub, pb)


# ------------------------------------------------------------------------------------------------
# API key

@pytest.fixture(scope="module")
def keyed_grpc_server(build_dir, model_path, repo_root, tmp_path_factory, api):
    s = launch_server(build_dir, model_path, repo_root, tmp_path_factory, api, api_key="sekret-key")
    yield s
    s.stop()


def test_api_key(keyed_grpc_server, pb):
    stub = keyed_grpc_server.stub
    # Health needs no key (for probes).
    assert stub.Health(pb.HealthRequest(), timeout=5).status == pb.HealthResponse.SERVING
    for metadata, code in [
        (None, grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer wrong"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("x-api-key", "wrong"),), grpc.StatusCode.UNAUTHENTICATED),
    ]:
        with pytest.raises(grpc.RpcError) as e:
            stub.Tokenize(pb.TokenizeRequest(text="hi"), metadata=metadata, timeout=5)
        assert e.value.code() == code
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Generate(greedy(pb, max_tokens=1), metadata=metadata, timeout=10))
        assert e.value.code() == code
    for metadata in [(("authorization", "Bearer sekret-key"),), (("x-api-key", "sekret-key"),)]:
        assert stub.Tokenize(pb.TokenizeRequest(text="hi"), metadata=metadata, timeout=5).token_ids
        msgs = list(stub.Generate(greedy(pb, max_tokens=1, ignore_eos=True), metadata=metadata, timeout=30))
        assert len(tokens_of(msgs)) == 1


# ------------------------------------------------------------------------------------------------
# Shutdown

def test_sigterm_drains_then_aborts_running_streams(build_dir, model_path, repo_root, tmp_path_factory, api):
    pb = api[0]
    s = launch_server(build_dir, model_path, repo_root, tmp_path_factory, api, shutdown_grace_seconds=3)
    try:
        it = iter(s.stub.Generate(long_request(pb), timeout=60))
        next(it)
        s.proc.send_signal(signal.SIGTERM)
        # During the grace period: Health says NOT_SERVING and new work is refused.
        deadline = time.monotonic() + 2.5
        while s.stub.Health(pb.HealthRequest(), timeout=5).status == pb.HealthResponse.SERVING:
            assert time.monotonic() < deadline, "Health stayed SERVING after SIGTERM"
            time.sleep(0.02)
        with pytest.raises(grpc.RpcError) as e:
            collect(s.stub, greedy(pb, max_tokens=1))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        # The running request is aborted at the end of the grace period; its call ends normally.
        rest = list(it)
        assert rest[-1].final.finish_reason == pb.FINISH_REASON_ABORT
        assert s.proc.wait(timeout=30) == 0
    finally:
        s.stop()


def test_chat_tools_render_as_over_http(grpc_server, stub, pb):
    """Tools, earlier calls and their results render as the HTTP API renders them: a call constrained to
    the function's parameters (json_schema) gives the greedy arguments HTTP's named tool_choice gives."""
    httpx = pytest.importorskip("httpx")
    params = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}
    tool = {"type": "function", "function": {"name": "get_time", "description": "Local time", "parameters": params}}
    args = '{"city": "Oslo"}'
    conv = [{"role": "user", "content": "What time is it in Oslo, and then in Rome?"},
            {"role": "assistant", "content": "",
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": args}}]},
            {"role": "tool", "content": "10:02"}]
    chat = pb.ChatMessages(messages=[
        pb.ChatMessage(role=m["role"], content=m["content"],
                       tool_calls=[pb.ChatToolCall(id=c["id"], name=c["function"]["name"],
                                                   arguments=c["function"]["arguments"]) for c in m.get("tool_calls", [])])
        for m in conv], tools=[json.dumps(tool)])
    msgs = collect(stub, pb.GenerateRequest(chat=chat, max_tokens=40, json_schema=json.dumps(params),
                                            sampling=pb.SamplingParams(temperature=0)))
    r = httpx.post(f"http://127.0.0.1:{grpc_server.http_port}/v1/chat/completions", timeout=120, json={
        "messages": conv, "tools": [tool], "max_tokens": 40, "temperature": 0,
        "tool_choice": {"type": "function", "function": {"name": "get_time"}}}).json()
    assert r["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == text_of(msgs)
    assert msgs[-1].final.usage.prompt_tokens == r["usage"]["prompt_tokens"]
    # Token for token the prompt HTTP renders, the parameters' keys in the client's order (not sorted).
    http = f"http://127.0.0.1:{grpc_server.http_port}"
    ids = httpx.post(http + "/tokenize", json={"messages": conv, "tools": [tool]}).json()["tokens"]
    assert json.dumps(params, separators=(",", ":")) in httpx.post(http + "/detokenize", json={"tokens": ids}).json()["prompt"]
    scored = collect(stub, pb.GenerateRequest(chat=chat, max_tokens=1, prompt_logprobs=0))
    assert [e.token_id for e in scored[0].prompt_logprobs] == ids[1:]
    bad_call = pb.ChatMessage(role="assistant", tool_calls=[pb.ChatToolCall(name="f", arguments="[1]")])
    expect_invalid(stub, pb.GenerateRequest(chat=pb.ChatMessages(messages=[bad_call])), "JSON text of an object",
                   "chat.messages[0].tool_calls[0].arguments")
    expect_invalid(stub, pb.GenerateRequest(chat=pb.ChatMessages(
        messages=[pb.ChatMessage(role="user", content="x")], tools=['{"type": "function"}'])), "tools[0].function")
    expect_invalid(stub, pb.GenerateRequest(chat=pb.ChatMessages(
        messages=[pb.ChatMessage(role="user", content="x")], tools=["{"])), "not JSON")
    deep = '{"type": "function", "function": {"name": "f", "parameters": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}}"
    expect_invalid(stub, pb.GenerateRequest(chat=pb.ChatMessages(
        messages=[pb.ChatMessage(role="user", content="x")], tools=[deep])), "nests deeper than 256")
