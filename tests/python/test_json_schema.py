"""Structured outputs: our schema-following recognizer (bin/json_schema_tool, engine/json_text.h)
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
import re
import subprocess

import pytest

from conftest import build_dir_path
from text_mutation import mutate

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
    "dict": {"type": "object", "properties": {"id": {"type": "integer"}, "idé": {"type": "null"}}, "required": ["id"],
             "additionalProperties": {"type": "array", "items": {"type": "number"}, "maxItems": 2}},
    "free": {"type": "object", "additionalProperties": True},
    # anyOf alternatives that begin alike (a tagged union of objects, overlapping scalars): followed
    # side by side.
    "union": {"type": "array", "maxItems": 3, "items": {"anyOf": [
        {"type": "object", "properties": {"kind": {"const": "cat"}, "lives": {"type": "integer"}},
         "required": ["kind"], "additionalProperties": False},
        {"type": "object", "properties": {"kind": {"const": "dog"}, "name": {"type": "string"}},
         "required": ["kind", "name"], "additionalProperties": False},
        {"type": "object", "properties": {"kind": {"enum": ["cat", "cow"]}, "moo": {"type": "boolean"}},
         "required": ["moo"], "additionalProperties": False},
        {"type": "integer"}, {"enum": [7, "x", 2.5]}, {"type": "string"}]}},
    "matrix": {"type": "array", "minItems": 2,
               "items": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2}},
}


def resolve(schema, root):
    while isinstance(schema, dict) and "$ref" in schema:
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
    value = {k: generate(props[k], root, rng, depth + 1) for k in keys}
    other = schema.get("additionalProperties", False)
    if other is not False:  # free keys, raw text (never a property's name)
        for _ in range(rng.randrange(3)):
            key = rng.choice(["x", "yz", "i", "idè", "", "é€"]) + str(rng.randrange(3))
            if key not in props:
                value[key] = generate(other, root, rng, depth + 1)
    return value


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


STRING_RULES = {  # schema -> hand-written strings, valid and not (random ones are added)
    "code": ({"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"}, ["AB-123", "AB-12", "ab-123", "AB-1234", "XY-000"]),
    "search": ({"type": "string", "pattern": "b\n+c|^q"}, ["b\nc", "xb\n\ncx", "bc", "q", "aq", "qq"]),
    "lengths": ({"type": "string", "minLength": 2, "maxLength": 4}, ["", "a", "ab", "\u00e9\u4e2d", "abcde", "a\"b"]),
    "unicode": ({"type": "string", "pattern": "^[\u00e0-\u00ff]+\\d?$", "maxLength": 3},
                ["\u00e9", "\u00e9\u00e87", "\u00e97", "e", "\u00e9\u00e9\u00e9\u00e9"]),
    "date": ({"type": "string", "format": "date"},
             ["2024-02-29", "2023-02-29", "1900-02-29", "2000-02-29", "2023-04-31", "2023-12-31", "0000-01-01",
              "0001-01-01", "2023-1-01", "2023-13-01"]),
    "uuid": ({"type": "string", "format": "uuid"},
             ["123e4567-e89b-12d3-a456-426614174000", "123E4567-E89B-12D3-A456-426614174000",
              "123e4567e89b12d3a456426614174000", "123e4567-e89b-12d3-a456-42661417400g"]),
    "ipv4": ({"type": "string", "format": "ipv4"},
             ["0.0.0.0", "255.255.255.255", "256.1.1.1", "01.2.3.4", "1.2.3", "10.0.0.10"]),
    "email": ({"type": "string", "format": "email"}, ["a@b.io", "first.last+x@mail.example.org", "a@b", "@b.io"]),
    "time": ({"type": "string", "format": "time"}, ["12:00:00Z", "23:59:59.123456+05:30", "24:00:00Z", "12:00:00"]),
    "date-time": ({"type": "string", "format": "date-time"},
                  ["2024-02-29T12:00:00Z", "2024-02-29t12:00:00.5-01:00", "2023-02-29T12:00:00Z", "2024-01-01T12:00"]),
}
FORMAT_CHECKER = jsonschema.FormatChecker()
STRING_ALPHABET = ["A", "B", "a", "b", "c", "e", "f", "q", "x", "0", "1", "2", "5", "9", "-", ".", ":", "@", "T", "Z",
                   "+", "\n", "\"", "\\", " ", "\u00e9", "\u00ff", "\u4e2d", "\x01"]


def oracle(name, schema, s):
    """Whether jsonschema (with its format checks) takes s; for the formats it checks loosely or not at
    all, None (then ours is only checked to be a subset of a stricter reading). A pattern's final '$'
    is ECMA-262's (the text's end), not Python's (also before a final newline): read as \\Z."""
    if name in ("time", "date-time", "email"):
        return None
    if schema.get("pattern", "").endswith("$"):
        schema = dict(schema, pattern=schema["pattern"][:-1] + "\\Z")
    return VALIDATOR(schema, format_checker=FORMAT_CHECKER).is_valid(s)


def stricter(name, s):
    """The readings ours must imply for the loosely checked formats."""
    import datetime
    if name == "email":
        return s.count("@") == 1 and "." in s.split("@")[1]
    try:
        if name == "time":
            return (s[-1] in "Zz" or s[-6] in "+-") and bool(datetime.time.fromisoformat(s.upper()))
        return (s[-1] in "Zz" or s[-6] in "+-") and bool(datetime.datetime.fromisoformat(s.upper()))
    except ValueError:
        return False


@pytest.mark.parametrize("name", sorted(STRING_RULES))
def test_string_rules_agree_with_jsonschema(name):
    # pattern (searched for), format and minLength/maxLength: a string written without \u escapes is
    # whole exactly when jsonschema takes it; one with a \u escape is never taken (such strings are
    # written raw); a taken text's every prefix is taken.
    schema, hand = STRING_RULES[name]
    rng = random.Random(name)
    strings = set(hand)
    for _ in range(400):
        strings.add(mutate(rng, rng.choice(hand), STRING_ALPHABET, edits=(0, 2)))
        strings.add("".join(rng.choice(STRING_ALPHABET) for _ in range(rng.randint(0, 6))))
    strings = sorted(strings)
    raw = [json.dumps(s, ensure_ascii=False) for s in strings]
    escaped = [json.dumps(s, ensure_ascii=True) for s in strings]
    [res] = run_tool([{"schema": schema, "texts": raw + escaped}])
    assert "error" not in res, res
    ours_raw, ours_escaped = res["results"][:len(raw)], res["results"][len(raw):]
    accepted = 0
    for s, text, (taken, complete), (_, complete_escaped) in zip(strings, raw, ours_raw, ours_escaped):
        expected = oracle(name, schema, s)
        if expected is None:
            assert not complete or stricter(name, s), (name, s)
        elif "\x01" in s:  # a control character other than \b \f \n \r \t needs \u: never written
            assert not complete, (name, s)
        else:
            assert complete == expected, (name, s)
        if "\\u" in json.dumps(s, ensure_ascii=True) and json.dumps(s, ensure_ascii=True) != text:
            assert not complete_escaped, (name, s)
        accepted += complete
    assert accepted >= 2, name
    positives = [t for t, (_, c) in zip(raw, ours_raw) if c]
    prefixes = sorted({t.encode()[:i].decode("utf-8", "ignore") for t in positives for i in range(len(t.encode()))})
    [res] = run_tool([{"schema": schema, "texts": prefixes}])
    assert all(taken for taken, _ in res["results"]), name


def test_integer_bounds_agree_with_jsonschema():
    # minimum / maximum / exclusiveMinimum / exclusiveMaximum (integers and fractions as bounds, either
    # side absent): an integer's text is whole exactly when jsonschema takes it; fractions, exponents,
    # "-0" and leading zeros are never written.
    rng = random.Random(5)
    requests, cases = [], []
    for _ in range(300):
        schema = {"type": "integer"}
        for key in rng.sample(["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"], rng.randint(1, 3)):
            scale = rng.choice([1, 10, 1000, 10 ** 6, 10 ** 15])
            schema[key] = rng.randint(-scale, scale) + rng.choice([0, 0, 0.5, -0.25])
        values = {0, 1, -1, 9, 10, 99, 100, -10, 10 ** 15, -(10 ** 15)}
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in schema:
                b = int(schema[key])
                values.update(b + d for d in range(-2, 3))
        values.update(rng.randint(-(10 ** 16), 10 ** 16) for _ in range(20))
        texts = sorted(str(v) for v in values) + ["-0", "00", "01", "1.0", "1e2", "-"]
        requests.append({"schema": schema, "texts": texts})
        cases.append((schema, texts))
    refused = 0
    for (schema, texts), res in zip(cases, run_tool(requests)):
        if "error" in res:  # bounds that allow no integer
            assert "allow no number" in res["error"], (schema, res)
            assert not any(VALIDATOR(schema).is_valid(v) for v in range(-(10 ** 6), 10 ** 6, 997)), schema
            refused += 1
            continue
        for text, (taken, complete) in zip(texts, res["results"]):
            canonical = text.lstrip("-").isdigit() and str(int(text)) == text and text != "-0"
            expected = canonical and VALIDATOR(schema).is_valid(int(text))
            assert complete == expected, (schema, text)
    assert refused < 100


def test_number_bounds_agree_with_jsonschema():
    # On "number": every text the recognizer calls whole is valid for jsonschema (which compares
    # doubles); and one written as the server writes bounded numbers (no exponent, at most 6 fraction
    # and 9 integer digits, no "-0") is whole exactly when it is valid.
    rng = random.Random(6)
    requests, cases = [], []
    for _ in range(300):
        schema = {"type": "number"}
        for key in rng.sample(["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"], rng.randint(1, 2)):
            scale = rng.choice([1, 10, 1000, 10 ** 6, 10 ** 12])
            schema[key] = round(rng.uniform(-scale, scale), rng.choice([0, 1, 2, 3, 7]))
        texts = {"0", "-0", "0.5", "1", "-1", "1e2", "1.5e-3", "0.1234567", "1000000000", "999999999.999999"}
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in schema:
                b = schema[key]
                for d in (0, 1e-6, -1e-6, 1e-3, -1e-3, 0.5, -0.5, 1, -1):
                    texts.add(repr(round(b + d, 6)))
                texts.add(json.dumps(b))
        texts.update(repr(round(rng.uniform(-2e6, 2e6), rng.randint(0, 7))) for _ in range(20))
        texts = sorted(texts)
        requests.append({"schema": schema, "texts": texts})
        cases.append((schema, texts))
    for (schema, texts), res in zip(cases, run_tool(requests)):
        if "error" in res:
            assert "allow no number" in res["error"], (schema, res)
            continue
        for text, (taken, complete) in zip(texts, res["results"]):
            valid = VALIDATOR(schema).is_valid(json.loads(text))
            if complete:
                assert valid, (schema, text)
            ours = re.fullmatch(r"-?(0|[1-9]\d{0,8})(\.\d{1,6})?", text) and not re.fullmatch(r"-0(\.0*)?", text)
            if ours:
                assert complete == valid, (schema, text)


def test_refused_schemas_name_the_keyword():
    results = run_tool([{"schema": s, "texts": []} for s in (
        {"type": "string", "format": "uri"},
        {"type": "object", "properties": {"a": {"type": "number", "multipleOf": 3}}},
        {"type": "object", "patternProperties": {"^a": {"type": "string"}}},
    )])
    assert "'format' \"uri\" is not supported" in results[0]["error"]
    assert "'multipleOf' is not supported (at #/properties/a)" in results[1]["error"]
    assert "'patternProperties' is not supported" in results[2]["error"]


def test_server_outputs_validate(start_server, model_name):
    """Sampled answers under a Pydantic-style schema, over HTTP (response_format and guided_json):
    each one that ends by itself validates; refused schemas are a 400 naming the field."""
    import httpx
    srv = start_server()
    schema = {"type": "object", "title": "Pet",
              "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                             "kind": {"enum": ["dog", "cat", "bird"]},
                             "owner": {"anyOf": [{"$ref": "#/$defs/Owner"}, {"type": "null"}]},
                             "toys": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
                             "chip": {"type": "string", "pattern": "^[A-Z]{3}-\\d{4}$"},
                             "born": {"type": "string", "format": "date"},
                             "nick": {"type": "string", "minLength": 2, "maxLength": 8},
                             "legs": {"type": "integer", "minimum": 0, "maximum": 8},
                             "weight": {"type": "number", "exclusiveMinimum": 0, "maximum": 99.5},
                             "scores": {"type": "object", "additionalProperties": {"type": "integer", "maximum": 10}}},
              "required": ["name", "age", "kind", "owner", "toys", "chip", "born", "nick", "legs", "weight", "scores"],
              "$defs": {"Owner": {"type": "object", "properties": {"first": {"type": "string"}}, "required": ["first"]}}}
    ask = [{"role": "user", "content": "Describe a pet as JSON."}]
    stopped = 0
    with httpx.Client(base_url=srv.base_url, timeout=300) as http:
        bodies = [{"model": model_name, "messages": ask, "max_tokens": 300, "temperature": 1.0, "seed": s, "n": 2,
                   "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}}
                  for s in (0, 2, 4)]  # choice k samples with seed + k
        bodies.append({"model": model_name, "messages": ask, "max_tokens": 300, "temperature": 0,
                       "guided_json": json.dumps(schema)})
        for body in bodies:
            r = http.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            for choice in r.json()["choices"]:
                text, why = choice["message"]["content"], choice["finish_reason"]
                if why == "stop":
                    VALIDATOR(schema, format_checker=FORMAT_CHECKER).validate(json.loads(text))
                    stopped += 1
                else:
                    assert why == "length", choice
        assert stopped >= 3
        r = http.post("/v1/chat/completions", json={
            "model": model_name, "messages": ask,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "number",
                                                                                              "multipleOf": 2}}}})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["param"] == "response_format.json_schema.schema" and "'multipleOf'" in err["message"], err
        r = http.post("/v1/completions", json={"model": model_name, "prompt": "x", "guided_json": "{"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "guided_json"
    assert srv.terminate() == 0
