"""Structured outputs: our schema-following recognizer (bin/json_schema_tool, engine/json_prefix.h)
against the `jsonschema` library, an independent validator, and the server's json_schema outputs
validated by it.

For each schema, random instances are generated from the schema, then broken at the value level
(a required key dropped, an unknown key, a value of another type, too many or too few items, a
value outside an enum) and at the byte level (bytes replaced, inserted, deleted, the text cut).
Every text is written with random whitespace and key order. The recognizer must take every valid
text whole, and call a text whole exactly when Python's json module reads it (no duplicate keys,
no NaN) and jsonschema finds it valid (the schemas say "additionalProperties": false, which the server
also takes when absent, as vLLM's xgrammar backend does), an integer being one written as an integer (JSON Schema
also counts 1.0 and 1e5; the server writes integers without a fraction or exponent, as xgrammar does).
"""

import json
import random
import subprocess

import pytest

from conftest import build_dir_path

pytest_plugins = ["conftest_server"]

jsonschema = pytest.importorskip("jsonschema")

TOOL = build_dir_path() / "bin" / "json_schema_tool"
# Draft 2020-12 with "integer" meaning a number written as an integer (json reads it as an int).
VALIDATOR = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool)))
pytestmark = pytest.mark.skipif(not TOOL.exists(), reason=f"{TOOL} not built")

ADDRESS = {"type": "object", "properties": {"street": {"type": "string"}, "zip": {"type": "integer"}},
           "required": ["street"], "additionalProperties": False}
SCHEMAS = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "title": "Name"},
            "age": {"type": "integer"},
            "height": {"type": "number"},
            "email": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
            "role": {"enum": ["admin", "user", 3, None]},
            "address": {"$ref": "#/$defs/Address"},
            "extra": {},
            "ok": {"type": "boolean"},
        },
        "required": ["name", "age", "tags", "role"],
        "additionalProperties": False,
        "$defs": {"Address": ADDRESS},
    },
    "tree": {
        "$defs": {"Node": {"type": "object",
                           "properties": {"v": {"type": ["integer", "null"]},
                                          "kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}, "maxItems": 2}},
                           "required": ["v"], "additionalProperties": False}},
        "$ref": "#/$defs/Node",
    },
    "rows": {"type": "array", "items": {"type": "object", "properties": {"k": {"const": "id"}, "n": {"type": "number"}},
                                        "required": ["k", "n"], "additionalProperties": False}, "maxItems": 4},
    "choice": {"enum": ["yes", "no", 1, 12, True, None]},
    "matrix": {"type": "array", "minItems": 2,
               "items": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2}},
}


def resolve(schema, root):
    while "$ref" in schema:
        ref = schema["$ref"]
        schema = root if ref == "#" else root["$defs"][ref.split("/")[-1]]
    return schema


def any_value(rng, depth=2):
    kind = rng.randrange(7 if depth > 0 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randrange(-1000, 1000)
    if kind == 3:
        return rng.choice([0.5, -2.25, 1e-7, 3.0e10, 123.456])
    if kind == 4:
        return rng.choice(["", "a b", "q\"uote", "back\\slash", "tab\t", "é€😀", "line\nbreak"])
    if kind == 5:
        return [any_value(rng, depth - 1) for _ in range(rng.randrange(3))]
    return {rng.choice(["a", "b", "key"]) + str(i): any_value(rng, depth - 1) for i in range(rng.randrange(3))}


def generate(schema, root, rng, depth=0):
    """A random valid instance of `schema` (the subset the server supports)."""
    schema = resolve(schema, root)
    if schema is True or schema == {}:
        return any_value(rng)
    if "anyOf" in schema:
        return generate(rng.choice(schema["anyOf"]), root, rng, depth)
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if "const" in schema:
        return schema["const"]
    types = schema.get("type")
    t = rng.choice(types) if isinstance(types, list) else types
    if t is None:
        t = "object" if "properties" in schema else "array"
    if t == "null" or (depth > 4 and "null" in (types if isinstance(types, list) else [])):
        return None
    if t == "boolean":
        return rng.random() < 0.5
    if t == "integer":
        return rng.randrange(-10**6, 10**6)
    if t == "number":
        return rng.choice([rng.randrange(-100, 100), rng.uniform(-1e3, 1e3), 1.5e-9])
    if t == "string":
        return rng.choice(["", "x", "hello world", "q\"uote", "é€😀", "tab\there", "\\"])
    if t == "array":
        lo, hi = schema.get("minItems", 0), schema.get("maxItems", 4)
        n = rng.randint(lo, min(hi, lo + 3)) if depth < 4 else lo
        return [generate(schema.get("items", {}), root, rng, depth + 1) for _ in range(n)]
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    keys = [k for k in props if k in required or (depth < 3 and rng.random() < 0.5)]
    rng.shuffle(keys)
    return {k: generate(props[k], root, rng, depth + 1) for k in keys}


def break_value(value, rng):
    """The instance with one value-level change somewhere (it may or may not stay valid)."""
    def walk(v):
        if isinstance(v, dict) and v and rng.random() < 0.6:
            k = rng.choice(list(v))
            action = rng.randrange(4)
            if action == 0:
                v.pop(k)
            elif action == 1:
                v["unknown" + str(rng.randrange(9))] = any_value(rng)
            elif action == 2:
                v[k] = any_value(rng)
            else:
                walk(v[k])
            return
        if isinstance(v, list) and rng.random() < 0.6:
            action = rng.randrange(4)
            if action == 0 and v:
                v.pop(rng.randrange(len(v)))
            elif action == 1:
                v.append(any_value(rng) if rng.random() < 0.5 else (v[0] if v else None))
            elif action == 2 and v:
                v[rng.randrange(len(v))] = any_value(rng)
            elif v:
                walk(rng.choice(v))
            return
        if isinstance(v, (dict, list)):
            for child in (v.values() if isinstance(v, dict) else v):
                if isinstance(child, (dict, list)):
                    walk(child)
                    return
    if not isinstance(value, (dict, list)):
        return any_value(rng)
    walk(value)
    return value


def write(value, rng):
    """value as JSON text with random whitespace (UTF-8 as is: enum and key texts match as written)."""
    indent = rng.choice([None, 0, 1, 2])
    separators = rng.choice([(",", ":"), (", ", ": "), (" , ", " : ")]) if indent is None else None
    return json.dumps(value, indent=indent, separators=separators, ensure_ascii=False)


def break_bytes(text, rng):
    chars = list("{}[],:\"\\ \n0123456789-.eEtrufalsnxyz")
    for _ in range(rng.randint(1, 2)):
        at = rng.randrange(len(text) + 1)
        action = rng.randrange(4)
        if action == 0 and at < len(text):
            text = text[:at] + rng.choice(chars) + text[at + 1:]
        elif action == 1:
            text = text[:at] + rng.choice(chars) + text[at:]
        elif action == 2 and at < len(text):
            text = text[:at] + text[at + 1:]
        else:
            text = text[:at]
    return text


def reference_whole(text, schema):
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError("duplicate key")
        return dict(pairs)

    def no_constants(name):
        raise ValueError(name)

    try:
        value = json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except ValueError:
        return False
    return VALIDATOR(schema).is_valid(value)


def run_tool(requests):
    lines = "".join(json.dumps(r) + "\n" for r in requests)
    out = subprocess.run([str(TOOL)], input=lines, capture_output=True, text=True, check=True, timeout=300)
    return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_recognizer_agrees_with_jsonschema(name):
    schema = SCHEMAS[name]
    rng = random.Random(name)
    valid, cases = [], []
    for _ in range(300):
        instance = generate(schema, schema, rng)
        text = write(instance, rng)
        assert reference_whole(text, schema), text  # the generator makes valid instances
        valid.append(text)
        cases.append(write(break_value(json.loads(text), rng), rng))
        cases.append(break_bytes(text, rng))
    result = run_tool([{"schema": schema, "texts": valid + cases}])[0]
    assert "results" in result, result
    results = result["results"]
    for text, (taken, whole) in zip(valid, results):
        assert taken and whole, f"a valid instance refused:\n{text}"
    agreed_invalid = 0
    for text, (taken, whole) in zip(cases, results[len(valid):]):
        expected = reference_whole(text, schema)
        assert whole == expected, f"ours {whole}, jsonschema {expected}:\n{text}"
        agreed_invalid += not expected
    assert agreed_invalid > 100


def test_refused_schemas_name_the_keyword():
    results = run_tool([{"schema": s, "texts": []} for s in (
        {"type": "string", "format": "date"},
        {"type": "object", "properties": {"a": {"type": "integer", "maximum": 3}}},
        {"type": "object", "additionalProperties": {"type": "string"}},
    )])
    assert "'format' is not supported" in results[0]["error"]
    assert "'maximum' is not supported (at #/properties/a)" in results[1]["error"]
    assert "additionalProperties" in results[2]["error"]


def test_server_outputs_validate(start_server, model_name):
    """Sampled answers under a Pydantic-style schema, over HTTP (response_format and guided_json):
    each one that ends by itself validates; refused schemas are a 400 naming the field."""
    import httpx
    srv = start_server()
    schema = {"type": "object", "title": "Pet",
              "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                             "kind": {"enum": ["dog", "cat", "bird"]},
                             "owner": {"anyOf": [{"$ref": "#/$defs/Owner"}, {"type": "null"}]},
                             "toys": {"type": "array", "items": {"type": "string"}, "maxItems": 2}},
              "required": ["name", "age", "kind", "owner", "toys"],
              "$defs": {"Owner": {"type": "object", "properties": {"first": {"type": "string"}}, "required": ["first"]}}}
    ask = [{"role": "user", "content": "Describe a pet as JSON."}]
    stopped = 0
    with httpx.Client(base_url=srv.base_url, timeout=300) as http:
        bodies = [{"model": model_name, "messages": ask, "max_tokens": 200, "temperature": 1.0, "seed": s, "n": 2,
                   "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}}
                  for s in (0, 2, 4)]  # choice k samples with seed + k
        bodies.append({"model": model_name, "messages": ask, "max_tokens": 200, "temperature": 0,
                       "guided_json": json.dumps(schema)})
        for body in bodies:
            r = http.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            for choice in r.json()["choices"]:
                text, why = choice["message"]["content"], choice["finish_reason"]
                if why == "stop":
                    VALIDATOR(schema).validate(json.loads(text))
                    stopped += 1
                else:
                    assert why == "length", choice
        assert stopped >= 3
        r = http.post("/v1/chat/completions", json={
            "model": model_name, "messages": ask,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string",
                                                                                              "minLength": 2}}}})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["param"] == "response_format.json_schema.schema" and "'minLength'" in err["message"], err
        r = http.post("/v1/completions", json={"model": model_name, "prompt": "x", "guided_json": "{"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "guided_json"
    assert srv.terminate() == 0
