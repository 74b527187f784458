"""Tool calling through the official `openai` SDK against the real `sparseserve serve` (the default
SmolLM2 model, ChatML: the Hermes convention): a named function's arguments always validate against its
parameters schema (checked by `jsonschema`, an independent validator), sampled or greedy, streamed or
not; "required" gives a list of calls, each following its own tool's schema, streamed as they are
written; earlier calls and their results render into the prompt; the tools' errors are 400s naming
the field."""
import json
import math
import random
import struct

import httpx
import openai
import pytest

pytest_plugins = ["conftest_server"]
jsonschema = pytest.importorskip("jsonschema")

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 24},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather forecast for a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "The local time in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
]
ASK = [{"role": "user", "content": "What will the weather be in Paris for the next three days?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def stream_calls(chunks):
    """Assembles streamed tool-call deltas: ({index: {"id", "name", "arguments"}}, content, finish_reason)."""
    calls, content, finish = {}, "", None
    for ch in chunks:
        for c in ch.choices:
            content += c.delta.content or ""
            for tc in c.delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": "", "pieces": 0})
                if tc.id:
                    assert call["id"] is None, "a call's id comes once"
                    call["id"] = tc.id
                if tc.function and tc.function.name:
                    call["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    call["arguments"] += tc.function.arguments
                    call["pieces"] += 1
            finish = c.finish_reason or finish
    return calls, content, finish


def test_named_function_arguments_follow_the_schema(client, model_name):
    r = client.chat.completions.create(model=model_name, messages=ASK, tools=TOOLS, tool_choice=NAMED,
                                       temperature=0, max_tokens=80)
    c = r.choices[0]
    assert c.finish_reason == "stop"
    assert c.message.content is None
    [call] = c.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    # The same call streamed: the same arguments, in pieces.
    calls, content, finish = stream_calls(client.chat.completions.create(
        model=model_name, messages=ASK, tools=TOOLS, tool_choice=NAMED, temperature=0, max_tokens=80, stream=True))
    assert finish == "stop" and content == ""
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert calls[0]["arguments"] == call.function.arguments


def test_a_recursive_pydantic_schema_as_parameters(client, model_name):
    # Pydantic's model_json_schema() of a recursive model: a root $ref into $defs. It was refused
    # ("'$ref' beside 'type'") as parameters while response_format took it.
    node = {"$defs": {"Node": {"type": "object", "title": "Node", "required": ["name"],
                               "properties": {"name": {"type": "string", "maxLength": 12},
                                              "children": {"type": "array", "maxItems": 2,
                                                           "items": {"$ref": "#/$defs/Node"}}}}},
            "$ref": "#/$defs/Node"}
    tools = [{"type": "function", "function": {"name": "make_tree", "parameters": node}}]
    r = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "A small tree."}],
                                       tools=tools, tool_choice={"type": "function", "function": {"name": "make_tree"}},
                                       temperature=0, max_tokens=120)
    c = r.choices[0]
    if c.finish_reason == "stop":
        jsonschema.validate(json.loads(c.message.tool_calls[0].function.arguments), node)
    else:
        assert c.finish_reason == "length" and c.message.tool_calls[0].function.name == "make_tree", c


def test_sampled_named_calls_validate(client, model_name):
    r = client.chat.completions.create(model=model_name, messages=ASK, tools=TOOLS, tool_choice=NAMED, n=6,
                                       temperature=1.3, seed=11, max_tokens=120)
    for c in r.choices:
        assert c.finish_reason == "stop", c
        jsonschema.validate(json.loads(c.message.tool_calls[0].function.arguments), WEATHER)


def test_required_gives_a_list_of_calls(client, model_name):
    tools = TOOLS[:1]
    r = client.chat.completions.create(model=model_name, messages=ASK, tools=tools, tool_choice="required",
                                       parallel_tool_calls=False, temperature=0, max_tokens=120)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    [call] = c.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    calls, _, finish = stream_calls(client.chat.completions.create(
        model=model_name, messages=ASK, tools=tools, tool_choice="required", parallel_tool_calls=False,
        temperature=0, max_tokens=120, stream=True))
    assert finish == "tool_calls"
    assert [(v["name"], json.loads(v["arguments"])) for v in calls.values()] == \
        [("get_weather", json.loads(call.function.arguments))]
    assert calls[0]["id"].startswith("call_")
    assert calls[0]["pieces"] > 3, "the arguments stream as they are written"


def test_streamed_calls_carry_their_token_ids(server, model_name):
    # return_token_ids under tool calling: every delta's ids go out (on the chunk of its call
    # deltas, or on one of their own while text is held back) and join to the unstreamed list.
    body = {"model": model_name, "messages": ASK, "tools": TOOLS[:1], "tool_choice": "required",
            "parallel_tool_calls": False, "temperature": 0, "max_tokens": 120, "return_token_ids": True}
    whole = httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=60).json()
    ids = whole["choices"][0]["token_ids"]
    assert whole["choices"][0]["finish_reason"] == "tool_calls" and ids
    streamed = []
    with httpx.stream("POST", server.base_url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                for ch in json.loads(line[6:])["choices"]:
                    streamed += ch.get("token_ids", [])
    assert streamed == ids


def test_required_with_several_tools_follows_each_tools_schema(client, model_name):
    # Sampled lists of calls: each call names an offered tool and its arguments validate against
    # that tool's parameters (the output's schema is an anyOf of the tools' call objects).
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    r = client.chat.completions.create(model=model_name, messages=ASK, tools=TOOLS, tool_choice="required", n=6,
                                       temperature=1.2, seed=3, max_tokens=160)
    finished = 0
    for c in r.choices:
        if c.finish_reason != "tool_calls":
            assert c.finish_reason == "length", c
            continue
        finished += 1
        assert c.message.tool_calls
        for call in c.message.tool_calls:
            jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
    assert finished >= 3


def test_auto_answers_in_text_or_calls(client, model_name):
    # Whatever the model chooses, the reply is well formed: text, or calls whose arguments are JSON
    # objects; streamed, the same.
    kwargs = dict(model=model_name, messages=ASK, tools=TOOLS, temperature=0, max_tokens=60)
    c = client.chat.completions.create(**kwargs).choices[0]
    calls, content, finish = stream_calls(client.chat.completions.create(**kwargs, stream=True))
    if c.message.tool_calls:
        assert c.finish_reason == finish == "tool_calls"
        assert [(t.function.name, json.loads(t.function.arguments)) for t in c.message.tool_calls] == \
            [(v["name"], json.loads(v["arguments"])) for v in calls.values()]
    else:
        assert c.message.content == content and c.finish_reason == finish and not calls


def test_calls_and_results_render_into_the_prompt(server, client, model_name):
    args = '{"city": "Oslo", "unit": "celsius", "days": 1}'
    conv = ASK + [
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": args}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "3 C, snow"},
    ]
    ids = httpx.post(server.base_url + "/tokenize", json={"messages": conv, "tools": TOOLS}).json()["tokens"]
    text = httpx.post(server.base_url + "/detokenize", json={"tokens": ids}).json()["prompt"]
    # Each definition on its line, OpenAI's field order outside the parameters, the client's inside
    # (WEATHER's keys are not in sorted order, nor are its properties).
    def line(t):
        f = t["function"]
        return ('{"type":"function","function":{"name":%s,"description":%s,"parameters":%s}}'
                % (json.dumps(f["name"]), json.dumps(f["description"]),
                   json.dumps(f["parameters"], separators=(",", ":"))))
    assert "<tools>\n" + "\n".join(line(t) for t in TOOLS) + "\n</tools>" in text
    assert text.endswith(
        "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
        + args + "}\n</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n3 C, snow\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    r = client.chat.completions.create(model=model_name, messages=conv, tools=TOOLS, tool_choice="none",
                                       temperature=0, max_tokens=16)
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls


def test_call_arguments_render_as_python_json_dumps_writes_them(server):
    # The templates write a call's arguments with tojson, i.e. json.dumps(json.loads(arguments)):
    # floats in Python's repr (random doubles over the whole range, the bounds of positional form),
    # integers past 64 bits whole, a repeated key once (first place, last value), nesting kept.
    seed = random.randrange(1 << 32)  # in the failure message: random.Random(seed) replays it
    rng = random.Random(seed)
    floats = [rng.uniform(-1, 1) * 10.0 ** rng.randint(-30, 30) for _ in range(60)]
    floats += [struct.unpack("<d", struct.pack("<Q", rng.getrandbits(63)))[0] for _ in range(40)]
    floats += [1e15, 1e16, 9999999999999998.0, 1234567890123456.7, 1e-4, 1e-5, 0.5, -0.0, 5e-324]
    floats = [f for f in floats if math.isfinite(f)]
    args = ('{"b": %s, "n": 123456789012345678901234567890, "a": 1, "deep": {"x": [1.5, {"y": []}], "x": 2}, "a": 3}'
            % json.dumps(floats))
    conv = ASK + [{"role": "assistant", "content": None,
                   "tool_calls": [{"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": args}}]}]
    ids = httpx.post(server.base_url + "/tokenize", json={"messages": conv, "tools": TOOLS}).json()["tokens"]
    text = httpx.post(server.base_url + "/detokenize", json={"tokens": ids}).json()["prompt"]
    expected = json.dumps(json.loads(args), ensure_ascii=False)
    assert expected.startswith('{"b": [') and '"a": 3, "deep": {"x": 2}}' in expected  # Python's own reading
    assert '{"name": "get_weather", "arguments": ' + expected + "}" in text, f"seed {seed}"


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
    ({"tools": TOOLS + TOOLS[:1]}, "tools[2].function.name"),
    ({"tools": TOOLS, "tool_choice": "always"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
    ({"tool_choice": NAMED}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": NAMED, "response_format": {"type": "json_object"}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "number", "multipleOf": 2}}}}}], "tool_choice": {"type": "function", "function": {"name": "f"}}},
     "tools[0].function.parameters"),
    # A root $ref must name an object schema: the arguments are an object.
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "$defs": {"S": {"type": "string"}}, "$ref": "#/$defs/S"}}}]}, "tools[0].function.parameters"),
])
def test_bad_tool_fields_are_400s(client, model_name, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model_name, messages=ASK, max_tokens=4, **extra)
    assert e.value.status_code == 400
    assert e.value.body["param"] == param, e.value.body


def test_bad_tool_messages_are_400s(http):
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}
    for messages, param in [
        (ASK + [{"role": "assistant", "tool_calls": [call]}], "messages[1].tool_calls[0].function.arguments"),
        (ASK + [{"role": "tool", "tool_call_id": "c"}], "messages[1].content"),
        ([{"role": "user", "content": "x", "tool_calls": [call]}], "messages[0].tool_calls"),
    ]:
        r = http.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 4})
        assert r.status_code == 400
        assert r.json()["error"]["param"] == param, r.json()
