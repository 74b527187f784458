"""The gRPC API (proto/sparseserve.proto) against the real server binary on loopback: health and
reflection, model info, the tokenizer, generation with every request option, bad inputs, chat with
tools. The server and the stubs come from conftest_grpc.py; test_grpc_lifecycle.py covers limits,
aborts, cancellation, the API key and shutdown.
"""
from __future__ import annotations

import json
import re
import threading

import pytest

grpc = pytest.importorskip("grpc")
pytest.importorskip("grpc_tools")

from conftest_grpc import PROMPT, collect, expect_invalid, greedy, text_of, tokens_of, wait_idle  # noqa: E402

pytest_plugins = ["conftest_grpc"]


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


def test_a_cached_prompt_reports_its_cached_tokens(stub, pb):
    # A dense prompt of 200 tokens: the second run finds its 3 whole blocks of 64 in the prefix cache.
    text = " ".join(f"word{i}" for i in range(100))
    ids = list(stub.Tokenize(pb.TokenizeRequest(text=text), timeout=5).token_ids)[:200]
    assert len(ids) == 200
    runs = [collect(stub, greedy(pb, token_ids=pb.TokenIds(ids=ids), sparsity="dense")) for _ in range(2)]
    assert [r[-1].final.usage.cached_tokens for r in runs] == [0, 192]
    assert tokens_of(runs[0]) == tokens_of(runs[1])
    # Another salt finds nothing; the streaming heads of the default profile keep no cache.
    salted = collect(stub, greedy(pb, token_ids=pb.TokenIds(ids=ids), sparsity="dense", cache_salt="tenant-x"))
    assert salted[-1].final.usage.cached_tokens == 0
    balanced = collect(stub, greedy(pb, token_ids=pb.TokenIds(ids=ids)))
    assert balanced[-1].final.usage.cached_tokens == 0


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


def test_server_survives_bad_inputs(stub, pb):
    # After every rejection above, ordinary calls still work and nothing is left running.
    assert tokens_of(collect(stub, greedy(pb, max_tokens=2)))
    wait_idle(stub, pb)


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
