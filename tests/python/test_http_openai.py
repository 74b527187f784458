"""The OpenAI HTTP API through the official `openai` SDK against the real `sparseserve serve`:
completions, chat, streaming (same text as non-streamed), usage in streams, n, logprobs, stop strings,
seeds, sparsity profiles, error classes, /v1/models, /tokenize, /detokenize, /metrics. Requests that
constrain the tokens (allowed ids, bad words, structured outputs) are in test_http_constraints.py."""
import json

import httpx
import numpy as np
import openai
import pytest

from conftest_server import stream_text

pytest_plugins = ["conftest_server"]

PROMPT = "The capital of France is"
QUESTION = [{"role": "user", "content": "Name three colors."}]


def test_models_and_health(client, server, model_name):
    models = client.models.list().data
    assert [m.id for m in models] == [model_name]
    assert client.models.retrieve(model_name).id == model_name
    assert httpx.get(server.base_url + "/health").status_code == 200


def test_completion_greedy(client, model_name, http):
    r = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=8, temperature=0)
    assert r.id.startswith("cmpl-") and r.object == "text_completion" and r.model == model_name
    [c] = r.choices
    assert c.index == 0 and c.text and c.finish_reason in ("stop", "length")
    n_prompt = http.post("/tokenize", json={"prompt": PROMPT}).json()["count"]
    assert r.usage.prompt_tokens == n_prompt
    assert 1 <= r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    if c.finish_reason == "length":
        assert r.usage.completion_tokens == 8


def test_chat_greedy(client, model_name):
    r = client.chat.completions.create(model=model_name, messages=QUESTION, max_tokens=12, temperature=0)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion"
    [c] = r.choices
    assert c.message.role == "assistant" and c.message.content
    assert "<|im_end|>" not in c.message.content and "<|im_start|>" not in c.message.content
    assert r.usage.completion_tokens <= 12


def test_completion_stream_equals_non_streamed(client, model_name):
    ref = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=12, temperature=0)
    texts, finish, _ = stream_text(
        client.completions.create(model=model_name, prompt=PROMPT, max_tokens=12, temperature=0, stream=True))
    assert texts == {0: ref.choices[0].text}
    assert finish == {0: ref.choices[0].finish_reason}


def test_chat_stream_equals_non_streamed(client, model_name):
    ref = client.chat.completions.create(model=model_name, messages=QUESTION, max_tokens=12, temperature=0)
    texts, finish, chunks = stream_text(
        client.chat.completions.create(model=model_name, messages=QUESTION, max_tokens=12, temperature=0, stream=True),
        chat=True)
    assert texts == {0: ref.choices[0].message.content}
    assert finish == {0: ref.choices[0].finish_reason}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(ch.object == "chat.completion.chunk" and ch.id == chunks[0].id for ch in chunks)


@pytest.mark.parametrize("chat", [False, True])
def test_stream_include_usage(client, model_name, chat):
    kw = dict(model=model_name, max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True})
    stream = (client.chat.completions.create(messages=QUESTION, **kw) if chat
              else client.completions.create(prompt=PROMPT, **kw))
    chunks = list(stream)
    *body, last = chunks
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens >= 1 and last.usage.prompt_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(ch.usage is None for ch in body)
    texts, _, _ = stream_text(body, chat=chat)
    assert texts[0]


def test_n2_choices(client, model_name):
    r = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=6, temperature=0.9, n=2, seed=3)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert r.usage.completion_tokens >= 2
    chat = client.chat.completions.create(model=model_name, messages=QUESTION, max_tokens=6, n=2, seed=3)
    assert sorted(c.index for c in chat.choices) == [0, 1]
    texts, finish, _ = stream_text(client.completions.create(model=model_name, prompt=PROMPT, max_tokens=6, n=2,
                                                             seed=3, temperature=0.9, stream=True))
    assert set(texts) == {0, 1} and set(finish) == {0, 1}
    # Seeded: the same n=2 request gives the same two texts streamed and not.
    assert texts == {c.index: c.text for c in r.choices}


def test_multiple_prompts(client, model_name):
    r = client.completions.create(model=model_name, prompt=[PROMPT, "1, 2, 3,"], max_tokens=4, temperature=0)
    assert sorted(c.index for c in r.choices) == [0, 1]
    single = client.completions.create(model=model_name, prompt="1, 2, 3,", max_tokens=4, temperature=0)
    assert r.choices[1].text == single.choices[0].text


def test_token_id_prompt(client, model_name, http):
    ids = http.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    by_ids = client.completions.create(model=model_name, prompt=ids, max_tokens=6, temperature=0)
    by_text = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text


def test_completion_logprobs(client, model_name):
    r = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert len(lp.tokens) == r.usage.completion_tokens
    for tok, l, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert l <= 0 and 2 <= len(top) <= 3 and tok in top
        assert l == pytest.approx(max(top.values()), abs=1e-5)  # greedy: the sampled token is the best
        # The most likely first, as OpenAI and vLLM list them (greedy: the sampled token is among them).
        assert list(top) == sorted(top, key=lambda t: -top[t]) and list(top)[0] == tok


def token_bytes(name: str) -> bytes:
    """The bytes of a token as logprobs name it: its text, or "bytes:\\xNN..." for a piece of a character."""
    if name.startswith("bytes:"):
        return bytes(int(h, 16) for h in name[len("bytes:"):].split("\\x")[1:])
    return name.encode()


def unique_keys(pairs):
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"repeated keys: {keys}"
    return dict(pairs)


@pytest.mark.parametrize("prompt,stop", [("中文：我爱北京天安门，天安门上", None),
                                         ("Le café est très bon, et le thé", None),
                                         ("Le café est très bon, et le thé", [", et le XYZ"])])
def test_completion_logprobs_count_characters_and_name_pieces_by_bytes(http, prompt, stop):
    # text_offset counts characters (vLLM, OpenAI), from the tokens, not from the text sent so far
    # (which a stop string's possible start holds back); a token holding a piece of a character is
    # named by its bytes, so no two alternatives of top_logprobs share a key.
    r = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 8, "temperature": 0, "logprobs": 3,
                                           "stop": stop})
    assert r.status_code == 200, r.text
    choice = json.loads(r.text, object_pairs_hook=unique_keys)["choices"][0]
    lp, text = choice["logprobs"], choice["text"]
    raw = [token_bytes(t) for t in lp["tokens"]]
    if stop is None:
        assert b"".join(raw).decode("utf-8", errors="replace") == text
    offsets = lp["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets)
    if all(not t.startswith("bytes:") for t in lp["tokens"]):
        assert offsets == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(raw))]
    else:
        for off, b in zip(offsets, raw):  # a token that starts a character points at it
            if b[0] & 0xC0 != 0x80:
                assert text[off].encode().startswith(b[:len(text[off].encode())]), (off, b, text)


def test_chat_logprobs(client, model_name):
    r = client.chat.completions.create(model=model_name, messages=QUESTION, max_tokens=5, temperature=0,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token
        assert bytes(entry.bytes) == token_bytes(entry.token)
    plain = client.chat.completions.create(model=model_name, messages=QUESTION, max_tokens=5, temperature=0)
    assert plain.choices[0].logprobs is None


def test_logprobs_name_tokens_by_id_on_request(http, model_name):
    # vLLM's return_tokens_as_token_ids: every token of logprobs is "token_id:ID" (chat: bytes of that
    # name); the ids are the ones the plain request names by text (the same greedy tokens), and
    # /detokenize turns them back into the text.
    body = {"model": model_name, "prompt": "中文：我爱北京", "max_tokens": 6, "temperature": 0, "logprobs": 2}
    plain = http.post("/v1/completions", json=body).json()["choices"][0]
    by_id = http.post("/v1/completions", json={**body, "return_tokens_as_token_ids": True}).json()["choices"][0]
    assert by_id["text"] == plain["text"]
    lp = by_id["logprobs"]
    assert all(t.startswith("token_id:") for t in lp["tokens"])
    ids = [int(t[len("token_id:"):]) for t in lp["tokens"]]
    assert http.post("/detokenize", json={"tokens": ids}).json()["prompt"] == by_id["text"]
    assert lp["token_logprobs"] == plain["logprobs"]["token_logprobs"]
    assert lp["text_offset"] == plain["logprobs"]["text_offset"]
    for top, tok in zip(lp["top_logprobs"], lp["tokens"]):
        assert tok in top and all(k.startswith("token_id:") for k in top)
    chat = http.post("/v1/chat/completions", json={
        "model": model_name, "messages": QUESTION, "max_tokens": 4, "temperature": 0, "logprobs": True,
        "top_logprobs": 2, "return_tokens_as_token_ids": True}).json()["choices"][0]
    for entry in chat["logprobs"]["content"]:
        assert entry["token"].startswith("token_id:") and bytes(entry["bytes"]) == entry["token"].encode()
        assert all(t["token"].startswith("token_id:") for t in entry["top_logprobs"])


def sse_chunks(http, path, body):
    """The data chunks of a streamed response, parsed."""
    with http.stream("POST", path, json={**body, "stream": True}) as s:
        return [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]


def test_return_token_ids_as_vllm(http, model_name):
    # vLLM's return_token_ids: completions give each choice its prompt's ids and its generated ids
    # (a stop token included), chat the prompt's ids on the response and each choice's ids;
    # streamed, the first chunk carries the prompt's ids and each chunk its new ids, which join to
    # the unstreamed list. Off by default.
    body = {"model": model_name, "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "return_token_ids": True}
    c = http.post("/v1/completions", json=body).json()["choices"][0]
    assert c["prompt_token_ids"] == http.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    assert http.post("/detokenize", json={"tokens": c["token_ids"]}).json()["prompt"].startswith(c["text"])
    chunks = [ch["choices"][0] for ch in sse_chunks(http, "/v1/completions", body)]
    assert chunks[0]["prompt_token_ids"] == c["prompt_token_ids"]
    assert all("prompt_token_ids" not in ch for ch in chunks[1:])
    assert [t for ch in chunks for t in ch["token_ids"]] == c["token_ids"]
    plain = http.post("/v1/completions", json={**body, "return_token_ids": False}).json()["choices"][0]
    assert "token_ids" not in plain and "prompt_token_ids" not in plain

    chat = {"model": model_name, "messages": QUESTION, "max_tokens": 12, "temperature": 0, "return_token_ids": True}
    r = http.post("/v1/chat/completions", json=chat).json()
    assert r["prompt_token_ids"] == http.post("/tokenize", json={"messages": QUESTION}).json()["tokens"]
    ids = r["choices"][0]["token_ids"]
    assert http.post("/detokenize", json={"tokens": ids}).json()["prompt"].startswith(r["choices"][0]["message"]["content"])
    streamed = sse_chunks(http, "/v1/chat/completions", chat)
    assert streamed[0]["prompt_token_ids"] == r["prompt_token_ids"]
    assert [t for ch in streamed if ch["choices"] for t in ch["choices"][0].get("token_ids", [])] == ids


@pytest.mark.parametrize("include", [False, True])
@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_not_leaked(client, model_name, stream, include):
    # The text ends right before the stop string, or with vLLM's include_stop_str_in_output right
    # after it; never a piece of it either way.
    full = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=16, temperature=0).choices[0].text
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]  # a stop string from the middle of the greedy text
    kw = dict(model=model_name, prompt=PROMPT, max_tokens=16, temperature=0, stop=[stop, "unlikely-stop-xyz"],
              extra_body={"include_stop_str_in_output": include})
    if stream:
        texts, finish, _ = stream_text(client.completions.create(stream=True, **kw))
        text, reason = texts.get(0, ""), finish[0]
    else:
        c = client.completions.create(**kw).choices[0]
        text, reason = c.text, c.finish_reason
    assert reason == "stop"
    assert text == full[:full.index(stop) + (len(stop) if include else 0)]


def test_skip_special_tokens(http, model_name):
    # vLLM's skip_special_tokens (default true): special tokens the model samples are left out of the
    # text unless it is false. logit_bias forces <|im_start|>, a special token that is no stop token.
    im_start = 1  # the default model's <|im_start|>
    assert http.post("/detokenize", json={"tokens": [im_start]}).json()["prompt"] == "<|im_start|>"
    body = {"model": model_name, "prompt": "Hi", "max_tokens": 2, "temperature": 0,
            "logit_bias": {str(im_start): 100}}
    assert http.post("/v1/completions", json=body).json()["choices"][0]["text"] == ""
    kept = http.post("/v1/completions", json={**body, "skip_special_tokens": False}).json()
    assert kept["choices"][0]["text"] == "<|im_start|><|im_start|>", kept
    # text_offset follows the text the request gets: the special tokens' text counts when kept.
    offsets = http.post("/v1/completions", json={**body, "skip_special_tokens": False, "logprobs": 0}).json()
    assert offsets["choices"][0]["logprobs"]["text_offset"] == [0, 12]
    skipped = http.post("/v1/completions", json={**body, "logprobs": 0}).json()
    assert skipped["choices"][0]["logprobs"]["text_offset"] == [0, 0]


def test_chat_generation_prompt_and_continue_final_message(http, model_name):
    # vLLM's add_generation_prompt / continue_final_message, for /v1/chat/completions as for /tokenize.
    open_turn = [{"role": "user", "content": "What is the capital of France?"},
                 {"role": "assistant", "content": "The capital of France is"}]
    cont = {"messages": open_turn, "add_generation_prompt": False, "continue_final_message": True}
    ids = http.post("/tokenize", json=cont).json()["tokens"]
    text = http.post("/detokenize", json={"tokens": ids}).json()["prompt"]
    assert text.endswith("<|im_start|>assistant\nThe capital of France is"), text
    reply = http.post("/v1/chat/completions", json={"model": model_name, **cont, "max_tokens": 3,
                                                     "temperature": 0}).json()
    assert reply["usage"]["prompt_tokens"] == len(ids)
    assert reply["choices"][0]["message"]["content"].strip().startswith("Paris"), reply
    # Without the generation prompt the conversation ends after the last turn.
    closed = {"messages": open_turn[:1], "add_generation_prompt": False}
    n_closed = http.post("/tokenize", json=closed).json()["count"]
    r = http.post("/v1/chat/completions", json={"model": model_name, **closed, "max_tokens": 1}).json()
    assert r["usage"]["prompt_tokens"] == n_closed
    both = http.post("/v1/chat/completions", json={"model": model_name, "messages": open_turn,
                                                    "continue_final_message": True})
    assert both.status_code == 400 and both.json()["error"]["param"] == "continue_final_message"
    for field, value in (("echo", True), ("chat_template", "{{ messages }}"), ("chat_template_kwargs", {"x": 1})):
        bad = http.post("/v1/chat/completions", json={"model": model_name, "messages": open_turn[:1], field: value})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == field, bad.text


def test_wrong_method_is_405_with_allow(http):
    for method, path, allow in (("GET", "/v1/chat/completions", "POST"), ("PUT", "/v1/completions", "POST"),
                                ("POST", "/v1/models", "GET, HEAD"), ("DELETE", "/v1/models/x", "GET, HEAD")):
        r = http.request(method, path, json={})
        assert r.status_code == 405, (method, path, r.status_code)
        assert r.headers["allow"] == allow
        assert r.json()["error"]["code"] == "method_not_allowed"
    assert http.get("/v1/nothing").status_code == 404
    assert http.head("/v1/models").status_code == 200
    # Those requests carried bodies no handler read: the connection closed after each answer, so
    # the next request on this client is not parsed from their leftovers.
    assert http.post("/tokenize", json={"prompt": "Hello"}).status_code == 200


def test_a_kv_cache_under_the_context_is_the_servers_context_length(start_server, model_name):
    # 8 MiB holds one sequence of 128 tokens under the dense profile (more under the default one,
    # whose streaming heads keep a bounded window): /v1/models says so, and longer requests are
    # refused as context overflows, as vLLM refuses what its cache cannot finish.
    srv = start_server(kv_cache_bytes="8MiB")
    try:
        with httpx.Client(base_url=srv.base_url, timeout=60) as c:
            limit = c.get("/v1/models").json()["data"][0]["max_model_len"]
            assert 128 <= limit < 8192
            for body in ({"prompt": "word " * 3000, "max_tokens": 1, "sparsity": "dense"},
                         {"prompt": "Story 1:", "max_tokens": 150, "sparsity": "dense"}):
                r = c.post("/v1/completions", json={"model": model_name, **body})
                assert r.status_code == 400, r.text
                err = r.json()["error"]
                assert (err["param"], err["code"]) == ("prompt", "context_length_exceeded"), err
                assert "maximum context length is 128 tokens" in err["message"] and "'dense'" in err["message"]
            ok = c.post("/v1/completions", json={"model": model_name, "prompt": "Story 1:", "max_tokens": 100,
                                                   "sparsity": "dense", "ignore_eos": True}).json()
            assert ok["usage"]["completion_tokens"] == 100 and ok["choices"][0]["finish_reason"] == "length"
    finally:
        srv.terminate()


def test_stop_reason_as_vllm_reports_it(http, model_name):
    # A stop_token_ids entry is reported as the token id (an integer), a stop string as the string,
    # and EOS or the chat end of turn as null. logit_bias forces the token.
    im_end = 2  # the default model's <|im_end|>: its end of turn and EOS
    assert http.post("/detokenize", json={"tokens": [im_end]}).json()["prompt"] == "<|im_end|>"
    comma = http.post("/tokenize", json={"prompt": ","}).json()["tokens"]
    assert len(comma) == 1
    body = {"model": model_name, "prompt": "Hi", "max_tokens": 4, "temperature": 0,
            "logit_bias": {str(comma[0]): 100}, "stop_token_ids": comma}
    c = http.post("/v1/completions", json=body).json()["choices"][0]
    assert (c["finish_reason"], c["stop_reason"], c["text"]) == ("stop", comma[0], "")
    c = http.post("/v1/completions", json={**body, "stop_token_ids": [], "stop": [",,"]}).json()["choices"][0]
    assert (c["finish_reason"], c["stop_reason"], c["text"]) == ("stop", ",,", "")
    chat = {"model": model_name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
            "temperature": 0, "logit_bias": {str(im_end): 100}}
    c = http.post("/v1/chat/completions", json=chat).json()["choices"][0]
    assert (c["finish_reason"], c["stop_reason"], c["message"]["content"]) == ("stop", None, "")
    # The stop token counts as generated and keeps its logprob, its text left out (vLLM); it was
    # dropped from both. With include_stop_str_in_output a stop_token_ids entry's text is kept.
    r = http.post("/v1/chat/completions", json={**chat, "logprobs": True, "top_logprobs": 1}).json()
    assert r["usage"]["completion_tokens"] == 1 and r["choices"][0]["message"]["content"] == "", r
    assert [e["token"] for e in r["choices"][0]["logprobs"]["content"]] == ["<|im_end|>"], r
    c = http.post("/v1/completions", json={**body, "include_stop_str_in_output": True}).json()
    assert (c["choices"][0]["text"], c["usage"]["completion_tokens"]) == (",", 1), c
    # ignore_eos ignores the end of turn too (here it is EOS itself); it once stopped chat anyway.
    r = http.post("/v1/chat/completions", json={**chat, "ignore_eos": True}).json()
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 4, r


def test_a_stop_string_the_end_of_generation_completes_is_the_stop(http, model_name):
    # The only token is the first byte of "日" (logit_bias): the end's flush writes U+FFFD for the
    # unfinished character, which completes the stop string "\ufffd". That ends the text as any stop
    # string does and is the reason (it said "length"), its text kept with include_stop_str_in_output.
    first_byte = http.post("/tokenize", json={"prompt": "日"}).json()["tokens"][0]
    assert http.post("/detokenize", json={"tokens": [first_byte]}).json()["prompt"] == "\ufffd"
    body = {"model": model_name, "prompt": "Hi", "max_tokens": 1, "temperature": 0,
            "logit_bias": {str(first_byte): 100}}
    c = http.post("/v1/completions", json=body).json()["choices"][0]
    assert (c["finish_reason"], c["stop_reason"], c["text"]) == ("length", None, "\ufffd")
    for include, text in [(False, ""), (True, "\ufffd")]:
        for stream in [False, True]:
            r = http.post("/v1/completions", json={**body, "stop": ["x", "\ufffd"], "stream": stream,
                                                   "include_stop_str_in_output": include})
            chunks = ([json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
                      if stream else [r.json()])
            assert "".join(ch["choices"][0]["text"] for ch in chunks) == text, r.text
            assert (chunks[-1]["choices"][0]["finish_reason"], chunks[-1]["choices"][0]["stop_reason"]) == \
                ("stop", "\ufffd"), r.text


def test_stop_strings_completed_by_one_token_go_by_the_requests_order(http, model_name):
    # vLLM tries the stop strings in the request's order: of two that one token completes, the first
    # listed wins though the other begins earlier (it was the earliest match).
    body = {"model": model_name, "prompt": "The capital of France is", "max_tokens": 3, "temperature": 0}
    text = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
    assert text.startswith(" Paris"), text
    for stop, cut in [(["ris", "Pa"], " Pa"), (["Pa", "ris"], " ")]:
        c = http.post("/v1/completions", json={**body, "stop": stop}).json()["choices"][0]
        assert (c["text"], c["stop_reason"]) == (cut, stop[0]), c


def test_min_tokens_holds_off_every_stop(http, model_name):
    # vLLM's min_tokens: logit_bias forces a stop token at every step; before the minimum it cannot
    # be drawn (EOS and the end of turn, stop_token_ids) and no stop string ends.
    im_end = 2
    comma = http.post("/tokenize", json={"prompt": ","}).json()["tokens"]
    chat = {"model": model_name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8,
            "temperature": 0, "logit_bias": {str(im_end): 100}, "min_tokens": 3}
    r = http.post("/v1/chat/completions", json=chat).json()
    assert (r["choices"][0]["finish_reason"], r["usage"]["completion_tokens"]) == ("stop", 4), r
    body = {"model": model_name, "prompt": "Hi", "max_tokens": 8, "temperature": 0,
            "logit_bias": {str(comma[0]): 100}, "min_tokens": 2, "stop_token_ids": comma}
    c = http.post("/v1/completions", json=body).json()
    assert (c["choices"][0]["stop_reason"], c["usage"]["completion_tokens"]) == (comma[0], 3), c
    # A stop string is not suppressed, only held off: ",," is in the text from the second comma on,
    # but ends past the minimum only with the fourth; the text is cut where that match begins.
    c = http.post("/v1/completions", json={**body, "stop_token_ids": [], "stop": [",,"], "min_tokens": 3}).json()
    assert (c["choices"][0]["text"], c["choices"][0]["stop_reason"], c["usage"]["completion_tokens"]) == \
        (",,", ",,", 4), c
    c = http.post("/v1/completions", json={**body, "stop_token_ids": [], "stop": [",,"], "min_tokens": 0}).json()
    assert (c["choices"][0]["text"], c["usage"]["completion_tokens"]) == ("", 2), c


@pytest.fixture(scope="module")
def numpy_reference(model_path):
    from numpy_llama import NumpyLlama
    return NumpyLlama(str(model_path))


def log_softmax(x):
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("repeats", [1, 30])  # 30: 331 tokens, prompt chunks of at most 256
def test_echo_returns_the_prompt_with_its_logprobs(http, model_name, numpy_reference, repeats):
    # echo with logprobs (how lm-evaluation-harness scores loglikelihoods): the prompt's tokens come
    # back first, the first with null, the others with their logprob given the tokens before, which
    # must match the independent numpy forward pass of the same weights.
    prompt = "The quick brown fox jumps over the lazy dog. " * repeats
    ids = http.post("/tokenize", json={"prompt": prompt}).json()["tokens"]
    body = {"model": model_name, "prompt": prompt, "max_tokens": 2, "temperature": 0, "echo": True, "logprobs": 2,
            "sparsity": "dense"}
    r = http.post("/v1/completions", json=body).json()
    c = r["choices"][0]
    lp = c["logprobs"]
    assert c["text"].startswith(prompt), c["text"][:200]
    assert r["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 2, "total_tokens": len(ids) + 2}
    assert len(lp["tokens"]) == len(ids) + 2
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["text_offset"][0] == 0 and lp["text_offset"][len(ids)] == len(prompt)
    assert lp["text_offset"] == sorted(lp["text_offset"])
    ref = log_softmax(numpy_reference.logits(ids))
    want = np.array([ref[p - 1][ids[p]] for p in range(1, len(ids))])
    got = np.array(lp["token_logprobs"][1:len(ids)])
    assert np.abs(got - want).max() < 5e-3, f"worst at {int(np.abs(got - want).argmax()) + 1}"
    for p in range(1, len(ids)):  # top 2, plus the prompt token itself when it is not among them
        assert 2 <= len(lp["top_logprobs"][p]) <= 3
    # Streamed, the same text and logprobs; without logprobs, the text alone.
    chunks = []
    with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:])["choices"][0])
    assert "".join(ch["text"] for ch in chunks) == c["text"]
    assert [t for ch in chunks if ch["logprobs"] for t in ch["logprobs"]["tokens"]] == lp["tokens"]
    plain = http.post("/v1/completions", json={**body, "logprobs": None}).json()["choices"][0]
    assert plain["text"] == c["text"] and plain["logprobs"] is None


def test_prompt_logprobs_as_vllm_returns_them(http, model_name):
    # A choice's prompt_logprobs (completions) or the response's (chat): null, then per prompt token
    # {id: {logprob, rank, decoded_token}} for the token and the top k; the values are echo's.
    prompt = "The capital of France is Paris, and the capital of Italy is"
    ids = http.post("/tokenize", json={"prompt": prompt}).json()["tokens"]
    body = {"model": model_name, "prompt": prompt, "max_tokens": 1, "temperature": 0}
    c = http.post("/v1/completions", json={**body, "prompt_logprobs": 2}).json()["choices"][0]
    echoed = http.post("/v1/completions", json={**body, "echo": True, "logprobs": 2}).json()["choices"][0]
    plp = c["prompt_logprobs"]
    assert len(plp) == len(ids) and plp[0] is None
    for p in range(1, len(ids)):
        entry = plp[p]
        own = entry[str(ids[p])]
        assert own["logprob"] == pytest.approx(echoed["logprobs"]["token_logprobs"][p], abs=1e-6)
        assert own["decoded_token"] == http.post("/detokenize", json={"tokens": [ids[p]]}).json()["prompt"]
        assert [e["rank"] for e in entry.values()][:2] == [1, 2] and own["rank"] >= 1  # in rank order, as vLLM
        assert len(entry) in (2, 3) and (own["rank"] <= 2) == (len(entry) == 2)
    chat = {"model": model_name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "prompt_logprobs": 0}
    r = http.post("/v1/chat/completions", json=chat).json()
    assert r["prompt_logprobs"][0] is None and len(r["prompt_logprobs"]) == r["usage"]["prompt_tokens"], r
    assert all(len(e) == 1 or len(e) == 2 for e in r["prompt_logprobs"][1:])


def test_echo_offsets_count_special_tokens_as_the_echo_shows_them(http, model_name):
    ids = [1, 4093, 198, 26843, 665, 2, 198]  # <|im_start|>user\n ... <|im_end|>\n: two special tokens
    assert http.post("/detokenize", json={"tokens": [1, 2]}).json()["prompt"] == "<|im_start|><|im_end|>"
    c = http.post("/v1/completions", json={"model": model_name, "prompt": ids, "echo": True, "logprobs": 0,
                                           "max_tokens": 2, "temperature": 0}).json()["choices"][0]
    offsets, tokens = c["logprobs"]["text_offset"], c["logprobs"]["tokens"]
    for i in range(len(ids)):  # each prompt token's text sits at its offset in the echoed text
        piece = http.post("/detokenize", json={"tokens": [ids[i]]}).json()["prompt"]
        assert c["text"][offsets[i]:offsets[i] + len(piece)] == piece, (i, tokens[i], offsets)
    assert offsets[len(ids)] == len(http.post("/detokenize", json={"tokens": ids}).json()["prompt"])


def test_special_bad_words_and_unsamplable_allowed_ids(http, model_name):
    chat = {"model": model_name, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 80,
            "temperature": 0}
    free = http.post("/v1/chat/completions", json=chat).json()
    assert free["choices"][0]["finish_reason"] == "stop", free
    banned = http.post("/v1/chat/completions", json={**chat, "bad_words": ["<|im_end|>"]}).json()
    # The end of turn is banned: the same greedy answer runs past where it ended.
    assert banned["usage"]["completion_tokens"] > free["usage"]["completion_tokens"], (free, banned)
    assert banned["choices"][0]["message"]["content"].startswith(free["choices"][0]["message"]["content"])
    r = http.post("/v1/completions", json={"model": model_name, "prompt": "Hi", "max_tokens": 5, "min_tokens": 3,
                                           "allowed_token_ids": [2]})
    assert r.status_code == 400 and r.json()["error"]["message"], r.text


def test_echo_per_prompt_and_choice(http, model_name):
    body = {"model": model_name, "prompt": ["Hello there", [11, 12, 13]], "n": 2, "max_tokens": 3,
            "temperature": 0.7, "seed": 1, "echo": True, "logprobs": 0}
    choices = sorted(http.post("/v1/completions", json=body).json()["choices"], key=lambda ch: ch["index"])
    decoded = http.post("/detokenize", json={"tokens": [11, 12, 13]}).json()["prompt"]
    for ch in choices:
        start = "Hello there" if ch["index"] < 2 else decoded
        assert ch["text"].startswith(start), ch
        n_prompt = 3 if ch["index"] >= 2 else len(http.post("/tokenize", json={"prompt": "Hello there"}).json()["tokens"])
        assert len(ch["logprobs"]["tokens"]) == n_prompt + 3


def test_seed_reproducible(client, model_name):
    kw = dict(model=model_name, prompt="Once upon a time", max_tokens=10, temperature=1.0, top_p=0.95)
    a = client.completions.create(seed=1234, **kw).choices[0].text
    b = client.completions.create(seed=1234, **kw).choices[0].text
    assert a == b


def test_sampling_extras_accepted(client, model_name):
    r = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=4, temperature=0.7, seed=5,
                                  presence_penalty=0.5, frequency_penalty=0.5, logit_bias={"0": -100}, user="u1",
                                  extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1})
    assert r.choices[0].finish_reason in ("stop", "length")


def test_sparsity_profiles_short_context_match_dense(client, model_name):
    """Contexts shorter than sink + local tokens and the decode budget: every profile is exactly dense."""
    texts = {}
    for profile in ("dense", "balanced", "streaming-only"):
        r = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=8, temperature=0,
                                      extra_body={"sparsity": profile})
        texts[profile] = r.choices[0].text
    assert len(set(texts.values())) == 1, texts


def test_sdk_error_classes(client, model_name, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=2)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=model_name, prompt=PROMPT, max_tokens=2, temperature=-1)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model_name, messages=QUESTION, max_tokens=8192)
    assert "maximum context length is 8192 tokens" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model_name, messages=QUESTION,
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "x", "schema": {"format": "uri"}}})
    assert e.value.body["param"] == "response_format.json_schema.schema" and "'format'" in e.value.body["message"]


def test_api_key(keyed_server, model_name):
    url = keyed_server.base_url + "/v1"
    with openai.OpenAI(base_url=url, api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(model=model_name, prompt=PROMPT, max_tokens=2)
    with openai.OpenAI(base_url=url, api_key=keyed_server.api_key, max_retries=0) as good:
        assert good.completions.create(model=model_name, prompt=PROMPT, max_tokens=2).choices[0].text is not None
        assert [m.id for m in good.models.list().data] == [model_name]
    # /health and /metrics need no key (probes and scrapers).
    assert httpx.get(keyed_server.base_url + "/health").status_code == 200
    assert httpx.get(keyed_server.base_url + "/metrics").status_code == 200


def test_tokenize_detokenize(http, model_name):
    t = http.post("/tokenize", json={"model": model_name, "prompt": "Hello world"}).json()
    assert t["count"] == len(t["tokens"]) > 0 and t["max_model_len"] == 8192
    assert http.post("/detokenize", json={"tokens": t["tokens"]}).json()["prompt"] == "Hello world"
    chat = http.post("/tokenize", json={"messages": QUESTION}).json()
    assert chat["count"] > t["count"]
    assert "<|im_start|>assistant" in http.post("/detokenize", json={"tokens": chat["tokens"]}).json()["prompt"]


def test_special_token_text_in_a_prompt_is_the_special_token(http, model_name):
    # As vLLM and llama.cpp encode prompts: a prompt already in the chat format keeps its markers as
    # the special tokens (the default model's <|im_start|> = 1, <|im_end|> = 2), in /tokenize and in
    # what /v1/completions feeds the model.
    prompt = "<|im_start|>user\nSay yes<|im_end|>\n<|im_start|>assistant\n"
    t = http.post("/tokenize", json={"model": model_name, "prompt": prompt}).json()
    assert t["tokens"].count(1) == 2 and t["tokens"].count(2) == 1, t
    assert http.post("/detokenize", json={"tokens": t["tokens"]}).json()["prompt"] == prompt
    r = http.post("/v1/completions", json={"model": model_name, "prompt": prompt, "max_tokens": 1,
                                            "temperature": 0, "echo": True, "logprobs": 0}).json()
    assert r["usage"]["prompt_tokens"] == t["count"], r
    assert r["choices"][0]["logprobs"]["tokens"][:2] == ["<|im_start|>", "user"], r


def test_metrics_exposition(client, model_name, server):
    client.completions.create(model=model_name, prompt=PROMPT, max_tokens=3, temperature=0)
    m = server.metrics()
    for name in ("time_to_first_token_seconds_count", "inter_token_latency_seconds_count",
                 "e2e_request_latency_seconds_count", "num_requests_running", "num_requests_waiting",
                 "kv_cache_usage_perc", "kv_pages_total", "kv_pages_in_use", "num_preemptions_total",
                 "prompt_tokens_total", "generation_tokens_total", "kv_bytes_saved", "decode_selected_ratio"):
        assert "sparseserve:" + name in m, name
    assert m["sparseserve:prompt_tokens_total"] > 0 and m["sparseserve:generation_tokens_total"] >= 3
    assert m['sparseserve:request_success_total{finished_reason="length"}'] >= 1
    assert m['sparseserve:kv_pages_used{role="retrieval"}'] >= 0
    assert m['sparseserve:e2e_request_latency_seconds_bucket{le="+Inf"}'] == m[
        "sparseserve:e2e_request_latency_seconds_count"] >= 1
    assert 0 <= m["sparseserve:kv_cache_usage_perc"] <= 1
