"""guided_regex: our compiled automaton (bin/regex_tool, engine/regex_dfa.h) against Python's re, an
independent regex engine, on random patterns of the supported syntax.

For each pattern, texts are drawn from the pattern itself (so that many match) and at random over a
small alphabet (ASCII, two- three- and four-byte characters), then mutated. For every text:
  - "the whole text is one match" equals re.fullmatch(pattern, text, re.ASCII);
  - every byte prefix of a matching text is walkable (no false dead end, partial UTF-8 included);
  - every walkable byte prefix, completed by the tool's shortest completion, fully matches under re
    (no walkable text is stranded: the completion exists and is right).
"""

import itertools
import json
import random
import re
import subprocess

import pytest

from conftest import build_dir_path
from text_mutation import mutate

TOOL = build_dir_path() / "bin" / "regex_tool"
pytestmark = pytest.mark.skipif(not TOOL.exists(), reason=f"{TOOL} not built")

ALPHABET = ["a", "b", "c", "z", "A", "0", "7", "_", "-", ".", " ", "\t", "\n", "{", "\u00e9", "\u00ff", "\u4e2d",
            "\U0001F600"]
LITERALS = ["a", "b", "c", "0", "-", r"\.", r"\-", r"\{", "\u00e9", "\u4e2d", "\U0001F600", r"\x41", r"\u00e9", " "]
CLASSES = [r"[abc]", r"[a-c]", r"[^ab]", r"[\d]", r"[^\w]", r"[\u00e0-\u00ff]", r"[^a-z\n]", r"[-a]", r"[a-]",
           r"[\s_]", r"[\u4e00-\u9fff0-9]", r"[^\u00e9]", "."] + [r"\d", r"\w", r"\s", r"\D", r"\W", r"\S"]

GROUP_NAMES = itertools.count()  # re refuses a name used twice


def gen(rng, depth):
    """A random pattern and a sampler of texts that match it (sampler(rng) -> str). Unbounded
    quantifiers go only on groups without a quantifier inside, so that re's backtracking stays short."""
    k = rng.random()
    if depth <= 0 or k < 0.3:
        if rng.random() < 0.5:
            lit = rng.choice(LITERALS)
            text = re.sub(r"\\x41", "A", lit)
            text = text.replace(r"\u00e9", "\u00e9").replace("\\", "")
            return lit, lambda r, t=text: t
        cls = rng.choice(CLASSES)
        members = [c for c in ALPHABET if re.fullmatch(cls, c, re.ASCII)]
        return cls, (lambda r, m=members: r.choice(m)) if members else None
    if k < 0.5:
        parts = [gen(rng, depth - 1) for _ in range(rng.randint(2, 3))]
        pat = "".join(p for p, _ in parts)
        if any(s is None for _, s in parts):
            return pat, None
        return pat, lambda r, ps=parts: "".join(s(r) for _, s in ps)
    if k < 0.65:
        parts = [gen(rng, depth - 1) for _ in range(rng.randint(2, 3))]
        pat = "|".join(p for p, _ in parts)
        live = [s for _, s in parts if s is not None]
        return pat, (lambda r, ls=live: r.choice(ls)(r)) if live else None
    inner, s = gen(rng, depth - 1)
    group = rng.choice(["(%s)", "(?:%s)", "(?P<g%d>%%s)" % next(GROUP_NAMES)]) % inner
    bounded = [(0, 1), (2, 2), (1, 3), (0, 2)]
    nested = any(q in inner for q in "*+?{")
    lo, hi = rng.choice(bounded if nested else bounded + [(0, None), (1, None), (2, None)])
    quant = {(0, None): "*", (1, None): "+", (0, 1): "?"}.get((lo, hi))
    if quant is None:
        quant = "{%d}" % lo if hi == lo else "{%d,}" % lo if hi is None else (
            "{,%d}" % hi if lo == 0 and rng.random() < 0.5 else "{%d,%d}" % (lo, hi))
    if rng.random() < 0.2:
        quant += "?"
    pat = group + quant
    if s is None:
        return pat, (lambda r: "") if lo == 0 else None
    top = hi if hi is not None else lo + 2
    return pat, lambda r, s=s, lo=lo, top=top: "".join(s(r) for _ in range(r.randint(lo, top)))


def latin1(b):
    return b.decode("latin-1")


def run_tool(requests):
    lines = "".join(json.dumps(r) + "\n" for r in requests)
    out = subprocess.run([str(TOOL)], input=lines, capture_output=True, text=True, check=True, timeout=600).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_random_patterns_agree_with_python_re():
    rng = random.Random(20261201)
    requests, cases = [], []
    while len(requests) < 1500:
        pattern, sampler = gen(rng, rng.randint(1, 4))
        if "^" in pattern or len(pattern) > 200:
            continue
        texts = set()
        for _ in range(12):
            if sampler is not None:
                t = sampler(rng)[:16]
                texts.add(t)
                texts.add(mutate(rng, t, ALPHABET))
            texts.add("".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 6))))
        byte_texts = set()
        for t in texts:
            b = t.encode()
            byte_texts.update(b[:i] for i in range(len(b) + 1))
        byte_texts = sorted(byte_texts)
        requests.append({"pattern": pattern, "texts": [latin1(b) for b in byte_texts]})
        cases.append((pattern, byte_texts))

    matched = walk_checked = 0
    for (pattern, byte_texts), res in zip(cases, run_tool(requests)):
        assert "error" not in res, (pattern, res)
        rx = re.compile(pattern, re.ASCII)
        walkable_of = {}
        for b, (walkable, match, completion) in zip(byte_texts, res["results"]):
            walkable_of[b] = walkable
            try:
                text = b.decode()
            except UnicodeDecodeError:
                text = None
            expected = text is not None and rx.fullmatch(text) is not None
            assert match == expected, (pattern, b)
            if walkable:
                whole = b + completion.encode("latin-1")
                assert rx.fullmatch(whole.decode()) is not None, (pattern, b, whole)
                walk_checked += 1
            else:
                assert completion is None
        for b in walkable_of:
            try:
                ok = rx.fullmatch(b.decode()) is not None
            except UnicodeDecodeError:
                ok = False
            if ok:
                matched += 1
                for i in range(len(b) + 1):
                    if b[:i] in walkable_of:
                        assert walkable_of[b[:i]], (pattern, b, b[:i])
    assert matched > 1000 and walk_checked > 5000, (matched, walk_checked)


@pytest.mark.parametrize("pattern", ["a{", "a{1", "x{}", "{", "a{,}b", "a{x}", "}", "]", r"[]a]", r"[^]a]",
                                     r"[%-/]", r"[a-b-c]", r"\{2}", "a||b", "(|a)", r"[\b]", r"[.]", r"\/\:"])
def test_edge_syntax_reads_as_python_does(pattern):
    texts = ["", "a", "a{", "a{1", "x{}", "{", "b", "ab", "aab", "a{x}", "}", "]", "a]", "%", ",", "-", "c", "{{",
             "\b", ".", "/:"]
    [res] = run_tool([{"pattern": pattern, "texts": texts}])
    assert "error" not in res, res
    rx = re.compile(pattern, re.ASCII)
    for t, (_, match, _) in zip(texts, res["results"]):
        assert match == (rx.fullmatch(t) is not None), (pattern, t)


def test_refusals_are_errors_not_crashes():
    patterns = [r"(a)\1", "(?=a)", r"\b", "(?i)a", "a*+", "*", "(", ")", "[", r"\p{L}", "(a|b)*a(a|b){20}"]
    for res in run_tool([{"pattern": p, "texts": ["a"]} for p in patterns]):
        assert "error" in res and res["error"], res
