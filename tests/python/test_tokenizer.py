"""Our tokenizer (bin/tokenize_tool) against Hugging Face `tokenizers` on the same vocabulary.

Both of our loaders are checked: the GGUF metadata path (--model) and the tokenizer.json path
(--hf-json, fed the file gguf_tokenizer_json.build_tokenizer_json writes). The SmolLM2 model's
own pre-tokenizer ('smollm') is compared, and the same vocabulary with the Llama-3, Qwen2 and
GPT-2 pre-tokenizers (a metadata-only GGUF and a tokenizer.json for each).

Environment: SPARSESERVE_BUILD (build dir, default /work/main/build), SPARSESERVE_MODEL (default
models/SmolLM2-135M-Instruct.Q4_1.gguf under the repository root). Skips when either is missing.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SPARSESERVE_BUILD", "/work/main/build"))
TOOL = BUILD / "bin" / "tokenize_tool"
MODEL = Path(os.environ.get("SPARSESERVE_MODEL", ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
if not MODEL.is_absolute():
    MODEL = ROOT / MODEL

pytestmark = [
    pytest.mark.skipif(not TOOL.exists(), reason=f"{TOOL} not built"),
    pytest.mark.skipif(not MODEL.exists(), reason=f"{MODEL} missing (scripts/fetch-model.sh)"),
]

tokenizers = pytest.importorskip("tokenizers")
gguf = pytest.importorskip("gguf")
from gguf_tokenizer_json import build_tokenizer_json  # noqa: E402

# ------------------------------------------------------------------------------------------------
# Corpus

SENTENCES = [
    "Hello world!", "The quick brown fox jumps over the lazy dog.", "How are you doing today?",
    "I can't believe it's already 2024.", "She said: \"Don't go there.\"", "a", "A", "",
    "Supercalifragilisticexpialidocious", "antidisestablishmentarianism", "e.g. i.e. etc.",
    "Mr. Smith went to Washington D.C. on Jan. 5th.", "OK", "ok?!", "Yes... no... maybe...",
    "This is a much longer sentence that keeps going, with commas, semicolons; colons: and dashes -- "
    "to see how the tokenizer copes with a long stretch of ordinary English prose.",
]
ACCENTS = [
    "café", "naïve résumé", "Ångström", "façade déjà vu", "Crème brûlée", "piñata jalapeño",
    "Straße Größe", "Ærøskøbing", "Dvořák", "Łódź", "Ελληνικά γράμματα", "Привет, мир!",
    "Українська мова", "e\u0301 combining acute", "n\u0303o", "Ǆ ǅ ǆ", "İstanbul ıi",
]
CJK = [
    "你好，世界！", "这是一个测试。", "日本語のテキスト", "カタカナとひらがな", "한국어 텍스트입니다",
    "東京都", "中文English混合", "「引用」『二重』", "全角！？", "漢字1234数字", "繁體中文測試",
    "ｈａｌｆ　ｗｉｄｔｈ", "表情😀与文字",
]
EMOJI = [
    "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇺🇸🇫🇷", "👩🏾‍💻", "🧑🏻‍🤝‍🧑🏿", "Emoji: 😀👍🏽🇺🇸 and ❤️",
    "🤖 robots 🤖🤖🤖", "✨sparkle✨", "☕️ coffee", "1️⃣ 2️⃣ #️⃣", "👋🏻👋🏼👋🏽👋🏾👋🏿", "🫠🫡🫶",
]
CODE = [
    "def foo(x):\n    return x ** 2\n", "int main() { return 0; }", "for (int i = 0; i < n; ++i) {}",
    "if x == 1:\n\tprint('tab')\n", "const auto& [a, b] = pair;", "SELECT * FROM t WHERE id=42;",
    "<div class=\"a\">text</div>", "x = {'k': [1, 2, 3]}", "#include <vector>\n",
    "fn main() -> Result<(), Box<dyn Error>> {}", "a->b.c::d", "λx.x", "$HOME/bin:$PATH",
    "   indented code\n      more", "// comment\n/* block */", "s = f\"{name!r:>10}\"",
    "json: {\"key\": null, \"n\": -1.5e-10}", "regex: ^[a-z]+\\d{3}$",
]
WHITESPACE = [
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t\tx", "x\t\t\t", "  leading",
    "trailing  ", "  both  ", "a  b   c    d", "line1\nline2\n\nline4", "mixed \t \n \r\n end",
    "\n\n\nstart", "end\n\n\n", " \u00a0nbsp", "em\u2003space", "ideo\u3000space", "\u2028\u2029",
    "x\u0085y", "\u180e mongolian", "zero\u200bwidth", "\ufeffbom", "a \n\tb", "    \n    \n",
    " " * 40, "\t \t \t", "a\n \nb", "  \n", "\n  ", "x \n", "word\n word",
]
DIGITS = [
    "0", "7", "42", "123", "1234", "12345678901234567890", "3.14159", "1,000,000", "-17", "+1e10",
    "0x1F", "2024-01-15", "12:34:56", "v1.2.3", "phone 555-1234", "10%", "$99.99", "٣٤٥",
    "१२३", "１２３", "²³", "½ ¼", "Ⅻ", "a1b2c3", "abc123def", "007", " 42", "x=100;y=200",
]
CONTRACTIONS = [
    "it's", "they're", "we'll", "I've", "I'm", "he'd", "don't", "IT'S", "THEY'RE", "WE'LL",
    "John's car", "JOHN'S CAR", "'s", "'S", "''", "rock'n'roll", "o'clock", "y'all'd've",
    "She'S here", "it’s curly", "we 'll spaced",
]
SPECIALS = [
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nHello<|im_end|>\n",
    "text<|endoftext|>more", "<|im_start|><|im_end|>", "<|im_start|>system\nYou are helpful.<|im_end|>",
    "a<|im_end|>b<|im_start|>c", " <|im_start|> ", "<|im_start", "im_start|>", "<|IM_START|>",
    "<|im_start|><|im_start|>", "<repo_name>x<file_sep>y", "<jupyter_code>print(1)",
    "<|endoftext|><|endoftext|>", "<<|im_end|>>", "<|<|im_start|>|>",
]
PUNCT = [
    "!!!", "???", "...", "?!?!", "---", "***", "(((nested)))", "[]{}()<>", "@#$%^&*", "~`|\\",
    "«quotes»", "„German“", "—em–en-", "…", "•·°", "¿Qué?", "¡Hola!", "→←↑↓", "∑∫√∞≠≤≥",
    "§¶†‡", "™©®", "''\"\"``", ";;;:::",
]
URLS = [
    "https://example.com/path?q=1&r=2#frag", "http://localhost:8080/v1/chat/completions",
    "ftp://files.example.org/pub/file.tar.gz", "mailto:someone@example.com",
    "www.hugging-face.co/models?search=smol", "file:///home/user/doc.txt",
    "https://en.wikipedia.org/wiki/Byte_pair_encoding", "git@github.com:org/repo.git",
]

# Random strings drawn from long-stable Unicode blocks (so the regex engines' tables agree).
RANDOM_RANGES = [
    (0x20, 0x7E), (0x20, 0x7E), (0x20, 0x7E), (0xA0, 0xFF), (0x100, 0x17F), (0x370, 0x3FF),
    (0x400, 0x4FF), (0x5D0, 0x5EA), (0x621, 0x64A), (0x660, 0x669), (0x905, 0x939),
    (0x966, 0x96F), (0xE01, 0xE3A), (0x3041, 0x3096), (0x30A1, 0x30FA), (0x4E00, 0x9FA5),
    (0xAC00, 0xD7A3), (0x2000, 0x206F), (0x2190, 0x21FF), (0x2200, 0x22FF), (0xFF01, 0xFF5E),
    (0x1F300, 0x1F64F), (0x1F680, 0x1F6C5), (0x2070, 0x209C), (0x2150, 0x2182), (0x300, 0x36F),
]
RANDOM_EXTRA = ["\t", "\n", "\r", " ", "  ", "'s", "'LL", "\u200d", "\ufe0f", "\u3000", "\u00a0"]


def random_strings(n: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 40)):
            if rng.random() < 0.15:
                chars.append(rng.choice(RANDOM_EXTRA))
            else:
                lo, hi = rng.choice(RANDOM_RANGES)
                chars.append(chr(rng.randint(lo, hi)))
        out.append("".join(chars))
    return out


def corpus() -> list[str]:
    fixed = (SENTENCES + ACCENTS + CJK + EMOJI + CODE + WHITESPACE + DIGITS + CONTRACTIONS +
             SPECIALS + PUNCT + URLS)
    combos = [a + " " + b for a, b in zip(SENTENCES, DIGITS)] + ["\n".join(CODE[:6]), " ".join(EMOJI)]
    return fixed + combos + random_strings(220)


CORPUS = corpus()

# ------------------------------------------------------------------------------------------------
# Helpers


def run_tool(args: list[str], lines: list[str]) -> list:
    proc = subprocess.run([str(TOOL), *args], input="".join(l + "\n" for l in lines),
                          capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert proc.returncode == 0, proc.stderr
    # Split on "\n" only: str.splitlines() would also split inside U+2028 and friends.
    out = [json.loads(l) for l in proc.stdout.split("\n") if l]
    assert len(out) == len(lines)
    return out


def encode_lines(texts: list[str]) -> list[str]:
    return [json.dumps(t) for t in texts]


def write_gguf_tokenizer(path: Path, pre: str, add_bos: bool | None) -> None:
    """A GGUF holding only the default model's tokenizer metadata, with another pre kind."""
    reader = gguf.GGUFReader(str(MODEL))

    def strings(key):
        f = reader.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def scalar(key):
        f = reader.fields[key]
        return f.parts[f.data[0]][0].item()

    f = reader.fields["tokenizer.ggml.token_type"]
    types = [int(f.parts[i][0]) for i in f.data]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(strings("tokenizer.ggml.tokens"))
    w.add_token_types(types)
    w.add_token_merges(strings("tokenizer.ggml.merges"))
    w.add_bos_token_id(scalar("tokenizer.ggml.bos_token_id"))
    w.add_eos_token_id(scalar("tokenizer.ggml.eos_token_id"))
    if add_bos is not None:
        w.add_add_bos_token(add_bos)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# pre kind -> tokenizer.ggml.add_bos_token written in the synthetic GGUF (None: key absent).
FAMILIES = {"smollm": False, "llama-bpe": None, "qwen2": False, "gpt2": True}


@pytest.fixture(scope="module")
def family_files(tmp_path_factory):
    """pre kind -> (GGUF path, tokenizer.json path, HF Tokenizer)."""
    base = tmp_path_factory.mktemp("tok")
    files = {}
    for pre, add_bos in FAMILIES.items():
        if pre == "smollm":
            gguf_path = MODEL
        else:
            gguf_path = base / f"{pre}.gguf"
            write_gguf_tokenizer(gguf_path, pre, add_bos)
        json_path = base / pre / "tokenizer.json"
        json_path.parent.mkdir()
        json_path.write_text(build_tokenizer_json(gguf_path), encoding="utf-8")
        files[pre] = (gguf_path, json_path, tokenizers.Tokenizer.from_file(str(json_path)))
    return files


def loader_args(files, pre: str, loader: str) -> list[str]:
    gguf_path, json_path, _ = files[pre]
    return ["--model", str(gguf_path)] if loader == "gguf" else ["--hf-json", str(json_path)]


def assert_same(texts, ours, theirs):
    bad = [(t, o, h) for t, o, h in zip(texts, ours, theirs) if o != h]
    assert not bad, f"{len(bad)} of {len(texts)} differ; first: {bad[:3]!r}"


# ------------------------------------------------------------------------------------------------
# Tests


def test_corpus_size():
    assert len(CORPUS) >= 300


@pytest.mark.parametrize("loader", ["gguf", "hf-json"])
@pytest.mark.parametrize("pre", list(FAMILIES))
def test_encode_matches_hf(family_files, pre, loader):
    hf = family_files[pre][2]
    ours = run_tool(loader_args(family_files, pre, loader), encode_lines(CORPUS))
    theirs = [e.ids for e in hf.encode_batch(CORPUS, add_special_tokens=True)]
    assert_same(CORPUS, ours, theirs)


@pytest.mark.parametrize("loader", ["gguf", "hf-json"])
def test_encode_without_special_parsing_matches_hf(family_files, loader):
    hf = tokenizers.Tokenizer.from_file(str(family_files["smollm"][1]))
    hf.encode_special_tokens = True  # special-token text is encoded as ordinary text
    texts = SPECIALS + SENTENCES
    ours = run_tool(loader_args(family_files, "smollm", loader) + ["--no-parse-special"],
                    encode_lines(texts))
    theirs = [e.ids for e in hf.encode_batch(texts)]
    assert_same(texts, ours, theirs)


def test_special_text_is_not_searched_for_other_added_tokens(family_files, tmp_path):
    """Without special parsing, a special token's text is ordinary text as a whole: an ordinary added
    token inside it ("|>" in "<|im_end|>") does not match there, as HF skips the special match."""
    tj = json.loads(family_files["smollm"][1].read_text(encoding="utf-8"))
    next_id = max([t["id"] for t in tj["added_tokens"]] + list(tj["model"]["vocab"].values())) + 1
    for i, content in enumerate(["|>", "_end", "m_e"]):
        tj["added_tokens"].append({"id": next_id + i, "content": content, "single_word": False, "lstrip": False,
                                   "rstrip": False, "normalized": False, "special": False})
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(tj), encoding="utf-8")
    hf = tokenizers.Tokenizer.from_file(str(path))
    hf.encode_special_tokens = True
    texts = ["<|im_end|>", "a<|im_start|>user|>b", "x|>y<|im_end|>|>", "<|im_end|im_end|>", "m_e<|endoftext|>_end"]
    ours = run_tool(["--hf-json", str(path), "--no-parse-special"], encode_lines(texts + SPECIALS))
    theirs = [e.ids for e in hf.encode_batch(texts + SPECIALS)]
    assert_same(texts + SPECIALS, ours, theirs)
    assert any(next_id in ids for ids in ours)  # the ordinary added tokens do match outside


@pytest.mark.parametrize("loader", ["gguf", "hf-json"])
def test_decode_matches_hf(family_files, loader):
    hf = family_files["smollm"][2]
    ids = [e.ids for e in hf.encode_batch(CORPUS)]
    ours = run_tool(loader_args(family_files, "smollm", loader) + ["--decode"],
                    [json.dumps(i) for i in ids])
    for text, i, o in zip(CORPUS, ids, ours):
        assert o["text"] == hf.decode(i, skip_special_tokens=False), text
        assert o["stream"] == o["text"], text


def test_decode_random_ids_matches_hf(family_files):
    """Random ids cut characters anywhere: lossy text equals HF's, streaming equals whole."""
    hf = family_files["smollm"][2]
    rng = random.Random(99)
    n = hf.get_vocab_size()
    seqs = [[rng.randrange(17, n) for _ in range(rng.randint(1, 12))] for _ in range(300)]
    seqs += [[rng.choice(range(90, 300)) for _ in range(8)] for _ in range(100)]  # byte tokens
    ours = run_tool(["--model", str(MODEL), "--decode"], [json.dumps(s) for s in seqs])
    for s, o in zip(seqs, ours):
        raw = bytes.fromhex(o["hex"])
        assert o["text"] == raw.decode("utf-8", errors="replace") == hf.decode(s), s
        assert o["stream"] == o["text"], s


def test_decode_skip_special(family_files):
    ours = run_tool(["--model", str(MODEL), "--decode", "--skip-special"], ["[1, 19556, 2, 905]"])
    assert ours[0]["text"] == "Hello world"


@pytest.mark.parametrize("loader", ["gguf", "hf-json"])
def test_invalid_utf8_round_trips(family_files, loader):
    # Every byte here has a byte-level token in the SmolLM2 vocabulary (0xC0, 0xC1, 0xF5..0xFF and
    # a few controls do not, and are dropped as HF drops characters without a token).
    samples = [b"\x80", b"\xe2\x82", b"abc\xe2\x82", b"\xed\xa0\x80", b"\xc3(", b"\xe0\x80\xaf",
               b"ok\xf0\x9f\x98", b"\xf0\x9f\x98\x80\x80", b"\x9f\x98\x80", b"a\xa0b\xbf",
               b"<|im_end|>\xe4\xb8", b"\xf4\x90\x80\x80", b"\xf3\xa0\x80"]
    args = loader_args(family_files, "smollm", loader)
    ids = run_tool(args + ["--no-add-special"], [json.dumps({"hex": s.hex()}) for s in samples])
    decoded = run_tool(args + ["--decode"], [json.dumps(i) for i in ids])
    for s, d in zip(samples, decoded):
        assert bytes.fromhex(d["hex"]) == s
        assert d["stream"] == s.decode("utf-8", errors="replace")


def test_unrepresentable_bytes_do_not_fail(family_files):
    ids = run_tool(["--model", str(MODEL)], [json.dumps({"hex": "ff41c0fe04"})])
    assert ids[0] == family_files["smollm"][2].encode("A\x04").ids


# Text that NFC changes: decomposed accents, a singleton (U+212B, U+2126), Hangul jamo, stacked and
# reordered combining marks, and composed text NFC leaves alone.
NFC_TEXTS = ["cafe\u0301 au lait", "\u212b and \u2126", "e\u0301\u0301", "\u1100\u1161\u11a8\u1100\u1161",
             "a\u0308o\u0308u\u0308 vs \u00e4\u00f6\u00fc", "x\u0327\u0301 x\u0301\u0327", "\ufb01 ligature",
             "Ame\u0301lie<|im_end|>\u0301", "\u0958\u0959 devanagari", "\u00c5ngstr\u00f6m",
             # Combining marks assigned after Unicode 9.0, which HF's tables predate: left in place
             # (ICU alone would reorder them), and marks of 9.0 and before around them still move.
             "\u0628\u089c\u0650", "a\u0316\u0d3b", "\u0c15\u0c4d\u0c3c", "a\u1ac1\u0316\u0301\u0327",
             "\u0628\u08d4\u0650"]


@pytest.mark.parametrize("loader", ["gguf", "hf-json"])
def test_nfc_normalizer_matches_hf(family_files, tmp_path, loader):
    """Qwen2's tokenizer normalizes to NFC (its tokenizer.json's normalizer; for a GGUF whose pre is
    qwen2, transformers' converter, which vLLM uses, adds it too): the text between added tokens is
    composed before pre-tokenizing, as HF tokenizers composes it."""
    tj = json.loads(family_files["qwen2"][1].read_text(encoding="utf-8"))
    assert tj["normalizer"] == {"type": "NFC"}
    hf = family_files["qwen2"][2]
    texts = NFC_TEXTS + CORPUS
    ours = run_tool(loader_args(family_files, "qwen2", loader), encode_lines(texts))
    theirs = [e.ids for e in hf.encode_batch(texts, add_special_tokens=True)]
    assert_same(texts, ours, theirs)
    tj["normalizer"] = None
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(tj), encoding="utf-8")
    without = run_tool(["--hf-json", str(path)], encode_lines(NFC_TEXTS))
    assert sum(a != b for a, b in zip(without, ours)) >= 6  # NFC changed most of these


def test_added_tokens_strip_whitespace_as_hf(family_files, tmp_path):
    """tokenizer.json's lstrip / rstrip: an added token's match takes the whitespace before / after it
    (Unicode White_Space, never past the previous added token), which is then not encoded; single_word
    is refused at load."""
    tj = json.loads(family_files["smollm"][1].read_text(encoding="utf-8"))
    by_content = {t["content"]: t for t in tj["added_tokens"]}
    by_content["<|im_end|>"].update(lstrip=True, rstrip=True)
    by_content["<|im_start|>"].update(rstrip=True)
    by_content["<|endoftext|>"].update(lstrip=True)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(tj), encoding="utf-8")
    hf = tokenizers.Tokenizer.from_file(str(path))
    texts = ["a <|im_end|> b", "a\n\t <|im_end|>\u3000\u2028b", "<|im_start|>  user\nhi<|im_end|>\n",
             "x  <|endoftext|>  y", "<|im_end|> <|im_end|>  <|endoftext|>", "a\u00a0\u200b<|im_end|>\u200bz",
             " <|im_start|>\u0085\u001c<|endoftext|>", "\u3000" * 3 + "<|endoftext|>" + "\u3000" * 3]
    ours = run_tool(["--hf-json", str(path)], encode_lines(texts + CORPUS))
    theirs = [e.ids for e in hf.encode_batch(texts + CORPUS, add_special_tokens=True)]
    assert_same(texts + CORPUS, ours, theirs)
    plain = run_tool(["--hf-json", str(family_files["smollm"][1])], encode_lines(texts))
    assert sum(a != b for a, b in zip(plain, ours)) >= 6  # the whitespace went into the tokens

    by_content["<|im_end|>"]["single_word"] = True
    path.write_text(json.dumps(tj), encoding="utf-8")
    proc = subprocess.run([str(TOOL), "--hf-json", str(path)], input="\"x\"\n", capture_output=True, text=True)
    assert proc.returncode != 0 and "single_word" in proc.stderr


def hf_numerics() -> list[str]:
    """Every code point HF's Digits isolates (Rust's char::is_numeric of the library's Unicode)."""
    candidates = [chr(c) for c in range(0x80, 0x110000) if not 0xD800 <= c < 0xE000]
    pieces = tokenizers.pre_tokenizers.Digits(individual_digits=True).pre_tokenize_str("a" + "a".join(candidates) + "a")
    return [p for p, _ in pieces if "a" not in p]


@pytest.mark.parametrize("loader", ["gguf", "hf-json"])
def test_digits_isolate_every_numeric_hf_does(family_files, loader):
    """SmolLM2's Digits step isolates each numeric character HF's does, those Unicode 15 added (Kawi,
    Kaktovik, Nag Mundari digits: past the system PCRE2's Unicode 14) included."""
    numerics = hf_numerics()
    assert len(numerics) > 1800 and "\U00011F50" in numerics and "\U0001D2C0" in numerics
    texts = ["\t\t" + c + "x" + c + c for c in numerics] + ["  " + "".join(numerics[i:i + 7]) for i in range(0, len(numerics), 7)]
    ours = run_tool(loader_args(family_files, "smollm", loader), encode_lines(texts))
    theirs = [e.ids for e in family_files["smollm"][2].encode_batch(texts, add_special_tokens=True)]
    assert_same(texts, ours, theirs)


EMPTY_MATCH_TEXTS = ["getHTTPResponse", "hello world", "aaa", "xAxBxxC", "ab  cd\n\nEF", "  ", "Hello World Über",
                     "日本語Text", "a1b22c333", "x", "é\u0301A"]


@pytest.mark.parametrize("pattern", [r"(?=\p{Lu})", r"\b", r"x*", r"(?<=a)", r"(?=\s)|\s+", r"\d*"])
@pytest.mark.parametrize("behavior", ["isolated", "removed", "merged_with_previous", "merged_with_next", "contiguous"])
def test_split_at_empty_matches_as_hf(family_files, tmp_path, pattern, behavior):
    """A Split regex that can match the empty string cuts the text at each empty match, as HF's does
    (the onig crate's find_iter: not right where the previous match ended); they were skipped."""
    tj = json.loads(family_files["smollm"][1].read_text(encoding="utf-8"))
    tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": behavior.title().replace("_", ""), "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(tj), encoding="utf-8")
    hf = tokenizers.Tokenizer.from_file(str(path))
    texts = EMPTY_MATCH_TEXTS + CORPUS[:80]
    ours = run_tool(["--hf-json", str(path)], encode_lines(texts))
    theirs = [e.ids for e in hf.encode_batch(texts, add_special_tokens=True)]
    assert_same(texts, ours, theirs)


def split_tokenizer(family_files, tmp_path, pattern: str, behavior: str) -> Path:
    """SmolLM2's tokenizer.json with one Split step (then ByteLevel without its regex)."""
    tj = json.loads(family_files["smollm"][1].read_text(encoding="utf-8"))
    tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": behavior, "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(tj), encoding="utf-8")
    return path


ONIG_TEXTS = ["a \nb", "cafe 12 DEADbeef", "x\x0by\x0cz\n\rw", "line one\nline two  \n  three", "snake_case‿tie",
              "e\u0301t\u00e9 na\u0308ive", "Ⅻ½٣ digits", "a-b c_d", "\u200d\u200cjoin", "  lead", "trail  ",
              "tab\tand\u3000ideo", "日本語の文", "$^.*", "x² ½y ⒶⓑⒸ", "a\u200db", "a\u180eb c", "aab aaaab",
              "AVv", "{,3}a{"]


@pytest.mark.parametrize("pattern", [r"\s+$", r"^\s+", r"^.", r".$", r"\h+", r"[\h_]+", r"\v", r"\w+", r"[\w-]+",
                                     r"\W+", r"\b", r"\B", r"\w\b", r"\d\B.", r"[^\S\n]+", r"[\S]", r"\S+", r"\V",
                                     r"[\V]", r"a{,3}", r"a{2}b", r"\u0041", r"[\u0061-\u0063]", r"\x41\x{42}?"])
def test_split_regexes_read_as_oniguruma_reads_them(family_files, tmp_path, pattern):
    """Constructs PCRE2 reads otherwise than Oniguruma (HF's engine) are rewritten: ^ and $ anchor
    lines, \\h is a hex digit, \\v the vertical tab, \\V the letter, \\S holds U+180E (in a class too),
    \\uHHHH a code point, {,n} is {0,n}, \\w \\W \\b \\B go by Oniguruma's word class."""
    path = split_tokenizer(family_files, tmp_path, pattern, "Removed")
    hf = tokenizers.Tokenizer.from_file(str(path))
    texts = ONIG_TEXTS + CORPUS[:120]
    ours = run_tool(["--hf-json", str(path)], encode_lines(texts))
    theirs = [e.ids for e in hf.encode_batch(texts, add_special_tokens=True)]
    assert_same(texts, ours, theirs)


@pytest.mark.parametrize("pattern", [r"\w", r"[\w]", r"\W", r"[^\w]"])
def test_word_classes_are_oniguruma_s(family_files, tmp_path, pattern):
    """Each code point up to U+2FFFF is removed by the word classes exactly where HF's removes it
    (Oniguruma's \\w outside a class also takes ² ³ ¹ ¼ ½ ¾, which its [\\w] leaves out)."""
    candidates = [chr(c) for c in range(0x80, 0x30000) if not 0xD800 <= c < 0xE000]
    path = split_tokenizer(family_files, tmp_path, pattern, "Removed")
    hf = tokenizers.Tokenizer.from_file(str(path))
    texts = ["\x01".join(candidates[i:i + 2000]) for i in range(0, len(candidates), 2000)]
    ours = run_tool(["--hf-json", str(path)], encode_lines(texts))
    theirs = [e.ids for e in hf.encode_batch(texts, add_special_tokens=True)]
    assert_same(texts, ours, theirs)


@pytest.mark.parametrize("pattern, what", [(r"[[:punct:]]+", "POSIX bracket"), (r"[a-z&&[^aeiou]]", "intersection"),
                                           (r"[a[b]]", "nested class"), (r"(?m:.)", "(?m)"), (r"(?s).", "(?s)"),
                                           (r"[\W]", r"\W inside"), (r"[^\H]", r"\H inside"),
                                           (r"\pL", "without braces"), (r"a{1,2}+b", "interval followed by +"),
                                           (r"\Qa.\E", r"\Q"), (r"\xg", r"\x without"), (r"\u12", r"\u without")])
def test_split_regexes_the_engines_read_apart_are_refused(family_files, tmp_path, pattern, what):
    path = split_tokenizer(family_files, tmp_path, pattern, "Isolated")
    proc = subprocess.run([str(TOOL), "--hf-json", str(path)], input="\"x\"\n", capture_output=True, text=True)
    assert proc.returncode != 0 and what in proc.stderr and "Oniguruma" in proc.stderr, proc.stderr
