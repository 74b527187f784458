"""Requests that constrain which tokens are sampled, through the OpenAI HTTP API against the real
`sparseserve serve`: allowed_token_ids and truncate_prompt_tokens, bad_words, JSON mode, and the
structured outputs (guided choice, regex and grammar) with how they end a choice or fail with a 400."""
from __future__ import annotations

import json
import re

import pytest

from conftest_server import stream_text

pytest_plugins = ["conftest_server"]


def test_allowed_token_ids_and_truncate_prompt_tokens(http, model_name):
    # allowed_token_ids: only those ids are sampled (greedy or not); the logprobs stay the model's.
    comma = http.post("/tokenize", json={"prompt": ","}).json()["tokens"]
    dot = http.post("/tokenize", json={"prompt": "."}).json()["tokens"]
    body = {"model": model_name, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0,
            "ignore_eos": True}
    c = http.post("/v1/completions", json={**body, "allowed_token_ids": comma}).json()["choices"][0]
    assert c["text"] == ",,,,,,", c
    chat = {"model": model_name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6,
            "temperature": 1.0, "seed": 7, "allowed_token_ids": comma + dot, "logprobs": True}
    r = http.post("/v1/chat/completions", json=chat).json()
    assert set(r["choices"][0]["message"]["content"]) <= {",", "."} and r["usage"]["completion_tokens"] == 6, r
    assert any(e["logprob"] < 0 for e in r["choices"][0]["logprobs"]["content"]), r
    # truncate_prompt_tokens keeps the last k tokens: the same as sending those tokens.
    ids = http.post("/tokenize", json={"prompt": "One two three four five six seven eight nine ten"}).json()["tokens"]
    cut = http.post("/v1/completions", json={**body, "prompt": ids, "truncate_prompt_tokens": 4}).json()
    alone = http.post("/v1/completions", json={**body, "prompt": ids[-4:]}).json()
    assert cut["usage"]["prompt_tokens"] == 4, cut
    assert cut["choices"][0]["text"] == alone["choices"][0]["text"]
    same = http.post("/v1/completions", json={**body, "prompt": ids, "truncate_prompt_tokens": -1}).json()
    assert same["usage"]["prompt_tokens"] == len(ids), same


def test_bad_words(http, model_name):
    # The greedy answer names Paris; banned, it names something else (mid-text, after a space, and
    # at the start of a text: both forms are banned).
    body = {"model": model_name, "prompt": "The capital of France is", "max_tokens": 12, "temperature": 0}
    free = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
    assert "Paris" in free, free
    banned = http.post("/v1/completions", json={**body, "bad_words": ["Paris"]}).json()
    assert "Paris" not in banned["choices"][0]["text"], banned
    chat = {"model": model_name, "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 24, "temperature": 0}
    assert "Paris" in http.post("/v1/chat/completions", json=chat).json()["choices"][0]["message"]["content"]
    r = http.post("/v1/chat/completions", json={**chat, "bad_words": ["Paris"]}).json()
    assert "Paris" not in r["choices"][0]["message"]["content"], r


def test_json_object_mode(client, http, model_name):
    # OpenAI's JSON mode: every answer that ends by itself (finish_reason stop) is one JSON object,
    # as Python's json module reads it; greedy, sampled (n=4), streamed, and on completions. Without
    # the mode the same greedy request does not answer in JSON.
    ask = [{"role": "user", "content": "Describe a dog as a JSON object with name, breed and age."}]
    free = client.chat.completions.create(model=model_name, messages=ask, max_tokens=160, temperature=0)
    with pytest.raises(json.JSONDecodeError):
        json.loads(free.choices[0].message.content)
    answers = []
    greedy = client.chat.completions.create(model=model_name, messages=ask, max_tokens=160, temperature=0,
                                            response_format={"type": "json_object"})
    answers += [(c.message.content, c.finish_reason) for c in greedy.choices]
    sampled = client.chat.completions.create(model=model_name, messages=ask, max_tokens=160, temperature=1.0, n=4,
                                             seed=3, response_format={"type": "json_object"})
    answers += [(c.message.content, c.finish_reason) for c in sampled.choices]
    streamed, reason = "", None
    for chunk in client.chat.completions.create(model=model_name, messages=ask, max_tokens=160, temperature=0,
                                                response_format={"type": "json_object"}, stream=True):
        if chunk.choices:
            streamed += chunk.choices[0].delta.content or ""
            reason = chunk.choices[0].finish_reason or reason
    assert (streamed, reason) == answers[0]
    body = {"model": model_name, "prompt": "A JSON object for a car:", "max_tokens": 120, "temperature": 0,
            "response_format": {"type": "json_object"}}
    completion = http.post("/v1/completions", json=body).json()["choices"][0]
    answers.append((completion["text"], completion["finish_reason"]))
    stopped = [text for text, why in answers if why == "stop"]
    assert len(stopped) >= 4, answers
    for text in stopped:
        assert isinstance(json.loads(text), dict), text
    for text, why in answers:
        assert why in ("stop", "length") and text.lstrip().startswith("{"), (text, why)


def test_guided_choice(http, model_name):
    # vLLM's guided_choice: the answer is exactly one of the strings, greedy or sampled, in chat and
    # completions.
    choices = ["Paris", "London", "Berlin", "a city in Spain"]
    chat = {"model": model_name, "messages": [{"role": "user", "content": "What is the capital of Germany?"}],
            "max_tokens": 20, "guided_choice": choices}
    r = http.post("/v1/chat/completions", json={**chat, "temperature": 0}).json()
    assert r["choices"][0]["message"]["content"] in choices and r["choices"][0]["finish_reason"] == "stop", r
    r = http.post("/v1/chat/completions", json={**chat, "temperature": 1.0, "n": 4, "seed": 5}).json()
    assert all(c["message"]["content"] in choices for c in r["choices"]), r
    r = http.post("/v1/completions", json={"model": model_name, "prompt": "The sky is", "max_tokens": 10,
                                           "temperature": 0, "guided_choice": ["blue", "green"]}).json()
    assert r["choices"][0]["text"] in ("blue", "green"), r
    # vLLM's newer spelling: structured_outputs {"choice": ...} / {"json": ...}.
    r = http.post("/v1/completions", json={"model": model_name, "prompt": "The sky is", "max_tokens": 10,
                                           "temperature": 0, "structured_outputs": {"choice": ["red", "grey"]}}).json()
    assert r["choices"][0]["text"] in ("red", "grey"), r
    schema = {"type": "object", "properties": {"colour": {"enum": ["blue", "grey"]}}, "required": ["colour"]}
    r = http.post("/v1/chat/completions", json={**chat, "guided_choice": None, "temperature": 0, "max_tokens": 40,
                                                "structured_outputs": {"json": schema}}).json()
    assert json.loads(r["choices"][0]["message"]["content"])["colour"] in ("blue", "grey"), r


def test_guided_regex(http, client, model_name):
    # vLLM's guided_regex: the whole answer matches, greedy or sampled, in chat and completions.
    pattern = r"(Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day, [1-9]\d? (January|March|May) 20\d\d"
    chat = {"model": model_name, "messages": [{"role": "user", "content": "Name a date."}], "max_tokens": 40,
            "guided_regex": pattern}
    r = http.post("/v1/chat/completions", json={**chat, "temperature": 0}).json()
    assert re.fullmatch(pattern, r["choices"][0]["message"]["content"]), r
    assert r["choices"][0]["finish_reason"] == "stop", r
    r = http.post("/v1/chat/completions", json={**chat, "temperature": 1.2, "n": 4, "seed": 3}).json()
    assert all(re.fullmatch(pattern, c["message"]["content"]) for c in r["choices"]), r
    phone = r"\(\d{3}\) \d{3}-\d{4}"
    r = http.post("/v1/completions", json={"model": model_name, "prompt": "Call us at", "max_tokens": 20,
                                           "temperature": 0, "structured_outputs": {"regex": phone}}).json()
    assert re.fullmatch(phone, r["choices"][0]["text"]) and r["choices"][0]["finish_reason"] == "stop", r
    # Streamed through the SDK (vLLM's fields go in extra_body): the deltas join into one match.
    texts, finish, _ = stream_text(client.completions.create(
        model=model_name, prompt="Call us at", max_tokens=20, temperature=0.8, seed=1, stream=True,
        extra_body={"guided_regex": phone}))
    assert re.fullmatch(phone, texts[0]) and finish[0] == "stop", texts


NESTED_LISTS = r"""root ::= "[" (item (", " item){0,3})? "]"
item ::= [0-9] | "[" [0-9] (", " [0-9]){0,3} "]"   # one level of nesting
"""


def nested_list_ok(text):
    """An independent check of NESTED_LISTS: json.dumps writes lists with ', ' as the grammar does."""
    try:
        v = json.loads(text)
    except ValueError:
        return False
    def ok(x, depth):
        if isinstance(x, list):
            return depth < 2 and len(x) <= 4 and (depth == 0 or len(x) >= 1) and all(ok(i, depth + 1) for i in x)
        return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 9
    return ok(v, 0) and json.dumps(v) == text


def test_guided_grammar(http, client, model_name):
    # vLLM's guided_grammar (GBNF, engine/grammar.h): the whole answer is one derivation, greedy or
    # sampled, in chat and completions; a context-free language (nesting) no regex states.
    chat = {"model": model_name, "messages": [{"role": "user", "content": "Write a list of digits."}],
            "max_tokens": 80, "guided_grammar": NESTED_LISTS}
    r = http.post("/v1/chat/completions", json={**chat, "temperature": 0}).json()
    assert nested_list_ok(r["choices"][0]["message"]["content"]), r
    assert r["choices"][0]["finish_reason"] == "stop", r
    r = http.post("/v1/chat/completions", json={**chat, "temperature": 1.2, "n": 4, "seed": 5}).json()
    assert all(nested_list_ok(c["message"]["content"]) for c in r["choices"]), r
    r = http.post("/v1/completions", json={"model": model_name, "prompt": "The matrix is", "max_tokens": 80,
                                           "temperature": 0.7, "seed": 2,
                                           "structured_outputs": {"grammar": NESTED_LISTS}}).json()
    assert nested_list_ok(r["choices"][0]["text"]) and r["choices"][0]["finish_reason"] == "stop", r
    texts, finish, _ = stream_text(client.completions.create(
        model=model_name, prompt="Numbers:", max_tokens=80, temperature=0.9, seed=4, stream=True,
        extra_body={"guided_grammar": NESTED_LISTS}))
    assert nested_list_ok(texts[0]) and finish[0] == "stop", texts


def test_a_whole_structured_output_ends_the_choice(http, model_name):
    # A choice made or a regex at its end admits nothing more: the choice ends there ("stop"), as vLLM
    # ends a request whose grammar terminated, even when min_tokens or ignore_eos would hold it open
    # (the rest was sampled unconstrained: "yes\n*The sky is...", "10000000000000000000").
    base = {"model": model_name, "prompt": "Is the sky blue? Answer:", "max_tokens": 12, "temperature": 0}
    for extra in ({"min_tokens": 5}, {"ignore_eos": True}):
        r = http.post("/v1/completions", json={**base, **extra, "guided_choice": ["yes", "no"]}).json()
        assert r["choices"][0]["text"] in ("yes", "no") and r["choices"][0]["finish_reason"] == "stop", (extra, r)
        r = http.post("/v1/completions", json={**base, **extra, "guided_regex": "[0-9]{2}"}).json()
        assert re.fullmatch("[0-9]{2}", r["choices"][0]["text"]), (extra, r)
        assert r["choices"][0]["finish_reason"] == "stop", (extra, r)


def test_structured_outputs_that_cannot_be_followed_are_400s(http, model_name):
    base = {"model": model_name, "prompt": "Is the sky blue? Answer:", "max_tokens": 10, "temperature": 0}
    # allowed_token_ids leaving no token the choice takes: no token is left (it drew EOS as text 10 times).
    maybe = http.post("/tokenize", json={"prompt": " maybe", "add_special_tokens": False}).json()["tokens"]
    assert len(maybe) == 1
    r = http.post("/v1/completions", json={**base, "guided_choice": ["yes", "no"], "allowed_token_ids": maybe})
    assert r.status_code == 400 and "no token is left to sample" in r.json()["error"]["message"], r.text
    # A grammar ambiguous inside every token: refused within one step's budget of search steps (it
    # slowed the whole engine ~35x, seconds per token, for every request).
    r = http.post("/v1/completions", timeout=120, json={
        **base, "max_tokens": 8,
        "guided_grammar": 'root ::= w{900}\nw ::= e e e e e e e e e e e e e e e e [a-z ]\ne ::= "" | ""\n'})
    assert r.status_code == 400 and "too ambiguous" in r.json()["error"]["message"], r.text
    # More parses than the stack sets track: an error, not the rest unconstrained (14 a's where 13 fit).
    rules = ['root ::= p13', 'p0 ::= "d"'] + [f'p{i} ::= "a" p{i - 1} "b" | "a" p{i - 1} "c"' for i in range(1, 14)]
    r = http.post("/v1/completions", json={**base, "max_tokens": 40, "guided_grammar": "\n".join(rules) + "\n"})
    if r.status_code == 200:
        text = r.json()["choices"][0]["text"]
        assert re.fullmatch("a{13}d[bc]{13}", text) or (r.json()["choices"][0]["finish_reason"] == "length"
                                                        and re.fullmatch("a{0,13}(d[bc]*)?", text)), text
    else:
        assert r.status_code == 400 and "too ambiguous" in r.json()["error"]["message"], r.text
    # Streamed, the error chunk is a 400's object.
    with http.stream("POST", "/v1/completions", json={**base, "stream": True, "guided_choice": ["yes", "no"],
                                                       "allowed_token_ids": maybe}) as s:
        body = "".join(s.iter_text())
    assert '"invalid_request_error"' in body and "no token is left to sample" in body, body
