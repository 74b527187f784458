"""Bad input over raw HTTP: every case is answered with the right status and OpenAI's error object
{"error": {"message", "type", "param", "code"}}, and the server still serves afterwards.

Unknown fields follow vLLM and OpenAI: ignored, at the top level and inside known objects."""
import gzip
import json
import socket
import time

import httpx
import pytest

pytest_plugins = ["conftest_server"]

C, H = "/v1/completions", "/v1/chat/completions"
OK_C = {"prompt": "Hello", "max_tokens": 1}
OK_H = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}


def c(**kw):
    return {**OK_C, **kw}


def h(**kw):
    return {**OK_H, **kw}


def without(body, key):
    return {k: v for k, v in body.items() if k != key}


def msgs(*m):
    return h(messages=list(m))


# (id, path, body: dict or raw bytes, status, param the error must name or None)
CASES = [
    ("malformed-json", C, b'{"prompt": "x",', 400, None),
    ("body-not-object", C, b"[1, 2]", 400, None),
    ("empty-body", C, b"", 400, None),
    ("invalid-utf8", C, b'{"prompt": "\xff\xfe abc", "max_tokens": 1}', 400, None),
    ("number-past-double", C, b'{"prompt": "x", "max_tokens": 1, "temperature": 1e400}', 400, None),
    ("number-past-double-unknown-field", C, b'{"prompt": "x", "max_tokens": 1, "extra": -1e309}', 400, None),
    ("prompt-missing", C, without(OK_C, "prompt"), 400, "prompt"),
    ("prompt-number", C, c(prompt=5), 400, "prompt"),
    ("prompt-object", C, c(prompt={"text": "x"}), 400, "prompt"),
    ("prompt-mixed-list", C, c(prompt=["a", 1]), 400, "prompt"),
    ("prompt-empty-list", C, c(prompt=[]), 400, "prompt"),
    ("prompt-empty-string", C, c(prompt=""), 400, "prompt"),
    ("prompt-token-out-of-vocab", C, c(prompt=[1, 999999]), 400, "prompt"),
    ("prompt-token-negative", C, c(prompt=[-1]), 400, "prompt"),
    ("max-tokens-negative", C, c(max_tokens=-1), 400, "max_tokens"),
    ("max-tokens-zero", C, c(max_tokens=0), 400, "max_tokens"),
    ("max-tokens-string", C, c(max_tokens="10"), 400, "max_tokens"),
    ("max-tokens-float", C, c(max_tokens=1.5), 400, "max_tokens"),
    ("temperature-negative", C, c(temperature=-1), 400, "temperature"),
    ("temperature-too-high", C, c(temperature=3), 400, "temperature"),
    ("temperature-string", C, c(temperature="hot"), 400, "temperature"),
    ("top-p-zero", C, c(top_p=0), 400, "top_p"),
    ("top-p-two", C, c(top_p=2), 400, "top_p"),
    ("top-k-below-minus-one", C, c(top_k=-2), 400, "top_k"),
    ("top-k-float", C, c(top_k=1.5), 400, "top_k"),
    ("min-p-above-one", C, c(min_p=1.5), 400, "min_p"),
    ("n-zero", C, c(n=0), 400, "n"),
    ("n-thousand", C, c(n=1000), 400, "n"),
    ("n-string", C, c(n="2"), 400, "n"),
    ("presence-penalty-5", C, c(presence_penalty=5), 400, "presence_penalty"),
    ("frequency-penalty-minus-3", C, c(frequency_penalty=-3), 400, "frequency_penalty"),
    ("repetition-penalty-zero", C, c(repetition_penalty=0), 400, "repetition_penalty"),
    ("logprobs-50", C, c(logprobs=50), 400, "logprobs"),
    ("logprobs-bool-in-completions", C, c(logprobs=True), 400, "logprobs"),
    ("stop-number", C, c(stop=5), 400, "stop"),
    ("stop-too-many", C, c(stop=[f"s{i}" for i in range(17)]), 400, "stop"),
    ("stop-empty-string", C, c(stop=[""]), 400, "stop"),
    ("stop-list-of-numbers", C, c(stop=[1, 2]), 400, "stop"),
    ("seed-string", C, c(seed="abc"), 400, "seed"),
    ("logit-bias-bad-key", C, c(logit_bias={"abc": 1}), 400, "logit_bias"),
    ("logit-bias-token-out-of-vocab", C, c(logit_bias={"999999": 1}), 400, "logit_bias"),
    ("logit-bias-list", C, c(logit_bias=[1, 2]), 400, "logit_bias"),
    ("stream-string", C, c(stream="yes"), 400, "stream"),
    ("stream-options-without-stream", C, c(stream_options={"include_usage": True}), 400, "stream_options"),
    ("include-usage-string", C, c(stream=True, stream_options={"include_usage": "yes"}), 400,
     "stream_options.include_usage"),
    ("model-number", C, c(model=5), 400, "model"),
    ("sparsity-unknown", C, c(sparsity="no-such-profile"), 400, "sparsity"),
    ("sparsity-number", C, c(sparsity=5), 400, "sparsity"),
    ("response-format-json-schema-missing", C, c(response_format={"type": "json_schema", "json_schema": {}}), 400,
     "response_format.json_schema.schema"),
    ("response-format-json-schema-pattern", C,
     c(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"pattern": "(a)\\1"}}}), 400,
     "response_format.json_schema.schema"),
    ("guided-json-with-response-format", C,
     c(response_format={"type": "json_object"}, guided_json={"type": "object"}), 400, "guided_json"),
    ("guided-json-number", C, c(guided_json=5), 400, "guided_json"),
    ("guided-choice-empty", C, c(guided_choice=[]), 400, "guided_choice"),
    ("guided-choice-empty-string", C, c(guided_choice=["a", ""]), 400, "guided_choice"),
    ("guided-choice-number", C, c(guided_choice=["a", 1]), 400, "guided_choice"),
    ("guided-choice-too-many", C, c(guided_choice=[str(i) for i in range(1025)]), 400, "guided_choice"),
    ("guided-choice-with-json", C, c(guided_choice=["a"], response_format={"type": "json_object"}), 400,
     "guided_choice"),
    ("response-format-regex", C, c(response_format={"type": "regex"}), 400, "response_format"),
    ("response-format-string", C, c(response_format="text"), 400, "response_format"),
    ("echo-string", C, c(echo="yes"), 400, "echo"),
    ("best-of-unsupported", C, c(best_of=3), 400, "best_of"),
    ("min-tokens-above-default-max-tokens", C, without(c(min_tokens=17), "max_tokens"), 400, "min_tokens"),
    ("min-tokens-above-max-tokens", H, h(max_tokens=4, min_tokens=5), 400, "min_tokens"),
    ("min-tokens-negative", H, h(min_tokens=-1), 400, "min_tokens"),
    ("allowed-token-ids-empty", C, c(allowed_token_ids=[]), 400, "allowed_token_ids"),
    ("allowed-token-ids-out-of-vocab", H, h(allowed_token_ids=[11, 999999]), 400, "allowed_token_ids"),
    ("allowed-token-ids-strings", C, c(allowed_token_ids=["a"]), 400, "allowed_token_ids"),
    ("truncate-prompt-tokens-zero", C, c(truncate_prompt_tokens=0), 400, "truncate_prompt_tokens"),
    ("truncate-prompt-tokens-minus-two", H, h(truncate_prompt_tokens=-2), 400, "truncate_prompt_tokens"),
    # vLLM extensions not implemented: refused, not silently ignored (their defaults pass: below)
    ("bad-words-string", C, c(bad_words=" Paris"), 400, "bad_words"),
    ("bad-words-blank", H, h(bad_words=["ok", "  "]), 400, "bad_words"),
    ("bad-words-numbers", C, c(bad_words=[1, 2]), 400, "bad_words"),
    ("bad-words-too-many", C, c(bad_words=[f"w{i}" for i in range(17)]), 400, "bad_words"),
    ("prompt-logprobs-streamed", C, c(prompt_logprobs=1, stream=True), 400, "prompt_logprobs"),
    ("prompt-logprobs-21", H, h(prompt_logprobs=21), 400, "prompt_logprobs"),
    ("prompt-logprobs-unlike-echoed-logprobs", C, c(prompt_logprobs=1, echo=True, logprobs=2), 400, "prompt_logprobs"),
    ("use-beam-search", H, h(use_beam_search=True), 400, "use_beam_search"),
    ("length-penalty", C, c(length_penalty=0.5), 400, "length_penalty"),
    ("guided-regex-backreference", H, h(guided_regex=r"(a)\1"), 400, "guided_regex"),
    ("guided-regex-number", C, c(guided_regex=5), 400, "guided_regex"),
    ("guided-regex-too-complex", C, c(guided_regex="(a|b)*a(a|b){20}"), 400, "guided_regex"),
    ("guided-regex-matches-nothing", C, c(guided_regex="[^\\x00-\\U0010FFFF]"), 400, "guided_regex"),
    ("guided-regex-with-choice", C, c(guided_regex="a", guided_choice=["a"]), 400, "guided_regex"),
    ("structured-outputs-regex-lookahead", C, c(structured_outputs={"regex": "(?=a)a"}), 400,
     "structured_outputs.regex"),
    ("structured-outputs-grammar-unterminated", C, c(structured_outputs={"grammar": "root ::= \"a"}), 400,
     "structured_outputs.grammar"),
    ("guided-grammar-undefined-rule", H, h(guided_grammar="root ::= item"), 400, "guided_grammar"),
    ("guided-grammar-left-recursive", C, c(guided_grammar="root ::= root \"a\" | \"a\""), 400, "guided_grammar"),
    ("guided-grammar-number", C, c(guided_grammar=5), 400, "guided_grammar"),
    ("guided-grammar-with-regex", C, c(guided_grammar="root ::= \"a\"", guided_regex="a"), 400, "guided_grammar"),
    ("structured-outputs-whitespace", C, c(structured_outputs={"json_object": True, "disable_any_whitespace": True}),
     400, "structured_outputs.disable_any_whitespace"),
    ("structured-outputs-two", C, c(structured_outputs={"choice": ["a"], "json_object": True}), 400,
     "structured_outputs.json_object"),
    ("structured-outputs-list", C, c(structured_outputs=["a"]), 400, "structured_outputs"),
    ("return-tokens-as-token-ids-not-a-bool", C, c(return_tokens_as_token_ids="yes"), 400, "return_tokens_as_token_ids"),
    ("logits-processors", C, c(logits_processors=["x"]), 400, "logits_processors"),
    # one token named twice: the biases added up past 100
    ("logit-bias-one-token-twice", C, c(logit_bias={"4528": 100, "04528": 100}), 400, "logit_bias"),
    ("user-number", C, c(user=5), 400, "user"),
    ("messages-missing", H, without(OK_H, "messages"), 400, "messages"),
    ("messages-empty", H, h(messages=[]), 400, "messages"),
    ("messages-string", H, h(messages="hi"), 400, "messages"),
    ("message-not-object", H, msgs(5), 400, "messages[0]"),
    ("role-unknown", H, msgs({"role": "wizard", "content": "x"}), 400, "messages[0].role"),
    ("role-missing", H, msgs({"content": "x"}), 400, "messages[0].role"),
    ("role-function", H, msgs({"role": "function", "content": "x", "name": "f"}), 400, "messages[0].role"),
    ("tool-without-content", H, msgs({"role": "tool", "tool_call_id": "c"}), 400, "messages[0].content"),
    ("content-number", H, msgs({"role": "user", "content": 5}), 400, "messages[0].content"),
    ("content-missing", H, msgs({"role": "user"}), 400, "messages[0].content"),
    ("content-image-part", H, msgs({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}),
     400, "messages[0].content[0].type"),
    ("content-part-without-text", H, msgs({"role": "user", "content": [{"type": "text"}]}), 400,
     "messages[0].content[0].text"),
    ("chat-logprobs-int", H, h(logprobs=1), 400, "logprobs"),
    ("top-logprobs-21", H, h(logprobs=True, top_logprobs=21), 400, "top_logprobs"),
    ("top-logprobs-without-logprobs", H, h(top_logprobs=2), 400, "top_logprobs"),
    ("tools-not-a-list", H, h(tools={"type": "function"}), 400, "tools"),
    ("tool-name-missing", H, h(tools=[{"type": "function", "function": {}}]), 400, "tools[0].function.name"),
    ("tool-choice-number", H, h(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice=1), 400,
     "tool_choice"),
    ("tool-choice-function-without-name", H, h(tools=[{"type": "function", "function": {"name": "f"}}],
                                               tool_choice={"type": "function", "function": {}}), 400,
     "tool_choice.function.name"),
    ("functions-legacy", H, h(functions=[{"name": "f"}]), 400, "functions"),
    ("max-completion-tokens-negative", H, h(max_completion_tokens=-5), 400, "max_completion_tokens"),
    ("chat-response-format-json-schema", H, h(response_format={"type": "json_schema", "json_schema": 5}), 400,
     "response_format.json_schema"),
    ("chat-temperature-null-ok-but-top-p-bad", H, h(temperature=None, top_p=-0.5), 400, "top_p"),
    ("tool-choice-with-grammar", H, h(tools=[{"type": "function", "function": {"name": "f"}}],
                                      tool_choice={"type": "function", "function": {"name": "f"}},
                                      guided_grammar='root ::= "a"'), 400, "tool_choice"),
    ("detokenize-not-ids", "/detokenize", {"tokens": "abc"}, 400, "tokens"),
    ("detokenize-out-of-vocab", "/detokenize", {"tokens": [999999]}, 400, "tokens"),
    ("tokenize-nothing", "/tokenize", {}, 400, None),
    ("top-p-zero-as-float", C, c(top_p=1e-46), 400, "top_p"),  # > 0 as a double, 0 as the float the engine takes
    ("repetition-penalty-zero-as-float", C, c(repetition_penalty=1e-300), 400, "repetition_penalty"),
]


def check_error(r: httpx.Response, status: int, param=None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
    if param is not None:
        assert err["param"] == param, err
    return err


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(http, case):
    _, path, body, status, param = case
    if isinstance(body, bytes):
        r = http.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = http.post(path, json=body)
    check_error(r, status, param)


def test_vllm_extensions_at_their_defaults_are_accepted(http):
    # Clients that send every field (vLLM's own, for instance) pass their defaults.
    defaults = dict(allowed_token_ids=None, bad_words=[], prompt_logprobs=None, use_beam_search=False,
                    length_penalty=1.0, guided_choice=None, structured_outputs=None, return_tokens_as_token_ids=False,
                    truncate_prompt_tokens=None, logits_processors=None, min_tokens=0)
    for path, body in ((C, c(**defaults)), (H, h(**defaults))):
        r = http.post(path, json=body)
        assert r.status_code == 200, r.text


def test_deeply_nested_bodies_are_400(http):
    # Written out, a value this deep (a ~600 KB body) would overflow a handler's stack: refused at
    # parsing, in any field, and the server keeps serving.
    deep = b"[" * 300_000 + b"]" * 300_000
    for field in (b"guided_json", b"temperature"):
        body = b'{"prompt": "x", "' + field + b'": ' + deep + b"}"
        r = http.post(C, content=body, headers={"content-type": "application/json"})
        err = check_error(r, 400)
        assert err["code"] == "invalid_json" and "deeper than 256" in err["message"], err
    r = http.post(C, json=c(guided_json=json.dumps({"enum": [json.loads("[" * 300 + "]" * 300)]})))
    check_error(r, 400, "guided_json")
    assert http.get("/health").status_code == 200


def test_objects_of_many_keys_parse_in_time(http):
    # 80,000 logit_bias keys (~1 MB): a reader whose objects look keys up linearly (ordered_json)
    # took 12 s to parse it, before any check; sorted maps take well under a second. Then the ids
    # past the vocabulary are a 400.
    body = c(logit_bias={str(i): 0.5 for i in range(80_000)})
    t0 = time.monotonic()
    r = http.post(C, json=body, timeout=60)
    check_error(r, 400, "logit_bias")
    assert time.monotonic() - t0 < 5, "parsing an object of 80,000 keys took seconds"
    # An object of 70,000 objects in an ignored field: nlohmann's parse with a callback rescanned the
    # object's members each time one ended (20 s).
    t0 = time.monotonic()
    r = http.post(C, json=c(max_tokens=1, metadata={str(i): {} for i in range(70_000)}), timeout=60)
    assert r.status_code == 200, r.text
    assert time.monotonic() - t0 < 5, "parsing an object of 70,000 objects took seconds"


def test_tools_of_many_keys_parse_in_time(http):
    # The tools are read a second time keeping their keys' order (they reach the prompt): that reader
    # too must be linear in an object's keys. 60,000 properties in one tool's parameters (ordered_json's
    # own parse: ~7 s); the prompt they make is over the server's limit.
    params = {"type": "object", "properties": {str(i): {} for i in range(60_000)}}
    body = h(tools=[{"type": "function", "function": {"name": "f", "parameters": params}}])
    t0 = time.monotonic()
    check_error(http.post(H, json=body, timeout=60), 400, "messages")
    assert time.monotonic() - t0 < 3, "reading tools of 60,000 keys took seconds"


def test_unknown_model_is_404(http):
    err = check_error(http.post(C, json=c(model="gpt-5")), 404, "model")
    assert err["code"] == "model_not_found"
    check_error(http.get("/v1/models/gpt-5"), 404)


def test_unknown_route_is_404(http):
    check_error(http.post("/v1/embeddings", json={"input": "x"}), 404)


def test_prompt_over_server_limit(http):
    # The fixture caps prompts at 2048 tokens (max_prompt_tokens).
    prompt = "hello " * 3000
    n = http.post("/tokenize", json={"prompt": prompt}).json()["count"]
    err = check_error(http.post(C, json=c(prompt=prompt)), 400, "prompt")
    assert str(n) in err["message"] and "2048" in err["message"] and err["code"] == "context_length_exceeded"


@pytest.mark.parametrize("path, body, what", [(H, OK_H, "messages"), (C, OK_C, "prompt")], ids=["chat", "completions"])
def test_context_overflow_names_the_numbers(http, path, body, what):
    n = http.post("/tokenize", json={what: body[what]}).json()["count"]
    err = check_error(http.post(path, json={**body, "max_tokens": 8192}), 400, what)
    assert err["message"] == (f"This model's maximum context length is 8192 tokens. However, you requested "
                              f"{n + 8192} tokens ({n} in the {what}, 8192 in the completion). Please reduce "
                              f"the length of the {what} or completion.")
    assert err["code"] == "context_length_exceeded"


def test_body_over_limit_is_413(http):
    big = json.dumps(c(prompt="x" * (1 << 20) + "y" * 1000)).encode()  # over the fixture's 1 MiB
    check_error(http.post(C, content=big, headers={"content-type": "application/json"}), 413)


def raw_exchange(server, head: bytes, body_parts, tail: bytes = b"") -> bytes:
    """Sends a request over a raw socket (head, then the body parts, then tail) and returns all the
    server sends until it closes the connection (or 10 s pass)."""
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        try:
            s.sendall(head)
            for part in body_parts:
                s.sendall(part)
            s.sendall(tail)
        except OSError:  # the server may close before it has read everything
            pass
        out = b""
        try:
            while d := s.recv(65536):
                out += d
        except (ConnectionResetError, socket.timeout):
            pass
        return out


def chunked(data: bytes, step: int = 65536):
    for i in range(0, len(data), step):
        part = data[i:i + step]
        yield b"%x\r\n" % len(part) + part + b"\r\n"
    yield b"0\r\n\r\n"


def test_chunked_body_over_limit_is_413_and_ends_the_connection(server):
    # httplib checks its limit against Content-Length alone: a chunked body used to be read whole.
    # The rest of a refused body must not be read as a next request, so the connection ends after
    # the one response; the request written after the body is never answered.
    big = json.dumps(c(pad="x" * (3 << 20))).encode()
    head = (f"POST {C} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    out = raw_exchange(server, head, chunked(big), b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 413 "), out[:300]
    assert out.count(b"HTTP/1.1 ") == 1, out[:2000]
    assert b'"code":"request_too_large"' in out
    small = json.dumps(c()).encode()
    out = raw_exchange(server, head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"), chunked(small))
    assert out.startswith(b"HTTP/1.1 200 "), out[:300]


def refused_once(server, headers: str, body: bytes, status: int) -> bytes:
    """POSTs body to /tokenize with the extra header lines, then a GET on the same connection:
    the POST must be answered `status` and the connection end there (the GET never answered)."""
    head = (f"POST /tokenize HTTP/1.1\r\nHost: x\r\n{headers}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    out = raw_exchange(server, head, [body], b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 %d " % status), out[:300]
    assert out.count(b"HTTP/1.1 ") == 1, out[:2000]
    return out


@pytest.mark.parametrize("length", ["abc", "-5", "5, 6", "12345678901234567890123"])
def test_unreadable_content_length_is_400_at_once_and_ends_the_connection(server, length):
    # httplib took an unreadable length for some number and waited for that body: the answer came
    # only at its 30 s read timeout (raw_exchange gives up after 10 s).
    head = (f"POST {C} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()
    out = raw_exchange(server, head, [], b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 "), out[:300]
    assert out.count(b"HTTP/1.1 ") == 1, out[:2000]
    assert b'"code":"invalid_content_length"' in out


def test_multipart_body_is_415_and_ends_the_connection(server):
    # httplib reads a multipart body only through part callbacks: the body was left half-read (a 500)
    # and its rest taken for the next request on the connection. Now: 415, and the connection ends.
    part = b'--xyz\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nHello\r\n--xyz--\r\n'
    out = refused_once(server, "Content-Type: multipart/form-data; boundary=xyz", part, 415)
    assert b'"code":"unsupported_media_type"' in out


def test_range_headers_are_ignored(server, http):
    # httplib applies a Range header to any response: the JSON was cut to the range, or copied once
    # per range (a small request could make the server build gigabytes). The API sends whole bodies.
    r = http.get("/v1/models", headers={"Range": "bytes=0-1"})
    assert r.status_code == 200, r.text[:300]
    assert r.json()["object"] == "list"
    r = http.post("/tokenize", json={"prompt": "a " * 1000}, headers={"Range": "bytes=" + ",".join(["0-"] * 500)})
    assert r.status_code == 200, r.text[:300]
    assert r.json()["count"] > 0  # one JSON document, not 500 byte ranges of it
    # A Range header httplib refuses (416, before routing): the whole error object, and the body
    # sent with it is not read as a next request.
    body = json.dumps({"prompt": "Hello"}).encode()
    out = refused_once(server, "Content-Type: application/json\r\nRange: bytes=0-0,5-1", body, 416)
    assert b'"error":{' in out


def test_compressed_body_over_limit_is_413(http):
    # 4 MiB of JSON that gzip packs into a few KB: the limit counts the inflated bytes.
    bomb = gzip.compress(json.dumps(c(pad="x" * (4 << 20))).encode())
    assert len(bomb) < 64 << 10
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    err = check_error(http.post(C, content=bomb, headers=headers), 413)
    assert err["code"] == "request_too_large"
    r = http.post(C, content=gzip.compress(json.dumps(c()).encode()), headers=headers)
    assert r.status_code == 200, r.text


def test_unknown_fields_are_ignored(http):
    r = http.post(C, json=c(no_such_field=1, metadata={"a": "b"}, stream=False))
    assert r.status_code == 200, r.text
    r = http.post(H, json=h(stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True,
                                                          "no_such_option": 1}, extra={"x": 1}))
    assert r.status_code == 200, r.text
    assert r.text.rstrip().endswith("data: [DONE]")
    r = http.post(H, json=msgs({"role": "user", "content": "Hi", "name": "bob", "unknown": 1}))
    assert r.status_code == 200, r.text


def test_api_key_required(keyed_server):
    with httpx.Client(base_url=keyed_server.base_url, timeout=60) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": keyed_server.api_key},
                        {"Authorization": "Basic " + keyed_server.api_key}):
            err = check_error(http.post(C, json=OK_C, headers=headers), 401)
            assert err["code"] == "invalid_api_key"
        check_error(http.get("/v1/models"), 401)
        check_error(http.post("/tokenize", json={"prompt": "x"}), 401)
        ok = http.post(C, json=OK_C, headers={"Authorization": "Bearer " + keyed_server.api_key})
        assert ok.status_code == 200, ok.text


def test_still_serves_after_bad_input(http):
    r = http.post(C, json={"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"]
    assert http.get("/health").status_code == 200
