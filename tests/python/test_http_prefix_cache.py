"""Prefix caching through the HTTP API of the real `sparseserve serve` (CPU backend): a chat request
whose system prompt an earlier request computed reports the cached tokens (usage.prompt_tokens_details
with --enable-prompt-tokens-details, the /metrics counters) and answers as a server without the cache
answers; profiles with streaming heads find nothing; usage leaves the details out by default, as vLLM."""
import numpy as np
import openai
import pytest

pytest_plugins = ["conftest_server"]

SYSTEM = ("You are a careful assistant for a public library. Answer in one short sentence. The library opens at "
          "nine in the morning and closes at six in the evening, every day but Sunday. Members may borrow ten "
          "books at a time for three weeks; a loan may be renewed twice unless someone has reserved the book.")
QUESTIONS = ["When does the library open?", "How many books may a member borrow?", "Is the library open on Sunday?"]


def chat(c: openai.OpenAI, question: str, sparsity: str = "dense"):
    return c.chat.completions.create(
        model="smollm2-135m-instruct", temperature=0, max_tokens=16, logprobs=True,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        extra_body={"sparsity": sparsity})


def answers(srv, sparsity="dense"):
    with openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        return [chat(c, q, sparsity) for q in QUESTIONS]


@pytest.fixture(scope="module")
def cached_server(start_server):
    srv = start_server(enable_prompt_tokens_details="true")
    yield srv
    srv.terminate()


def test_a_shared_system_prompt_is_cached_and_answers_as_without_the_cache(cached_server, start_server):
    before = cached_server.metrics()
    got = answers(cached_server)
    after = cached_server.metrics()
    n_prompt = [r.usage.prompt_tokens for r in got]
    cached = [r.usage.prompt_tokens_details.cached_tokens for r in got]
    # The first computes everything; the others find the system prompt's whole 64-token blocks.
    assert cached[0] == 0
    for n, c in zip(n_prompt[1:], cached[1:]):
        assert c >= 64 and c % 64 == 0 and c < n
    assert after["sparseserve:prefix_cache_queries_total"] - before["sparseserve:prefix_cache_queries_total"] == sum(n_prompt)
    assert after["sparseserve:prefix_cache_hits_total"] - before["sparseserve:prefix_cache_hits_total"] == sum(cached)
    assert after["sparseserve:prompt_tokens_total"] - before["sparseserve:prompt_tokens_total"] == sum(n_prompt)

    plain = start_server(enable_prefix_caching="false", enable_prompt_tokens_details="true")
    try:
        want = answers(plain)
        assert plain.metrics()["sparseserve:prefix_cache_queries_total"] == 0
    finally:
        plain.terminate()
    for r, w in zip(got, want):
        assert r.choices[0].message.content == w.choices[0].message.content
        assert w.usage.prompt_tokens_details.cached_tokens == 0
        lp = np.array([t.logprob for t in r.choices[0].logprobs.content])
        lw = np.array([t.logprob for t in w.choices[0].logprobs.content])
        np.testing.assert_allclose(lp, lw, atol=1e-4)


def test_profiles_with_streaming_heads_find_nothing(cached_server):
    got = answers(cached_server, sparsity="balanced")
    assert [r.usage.prompt_tokens_details.cached_tokens for r in got] == [0, 0, 0]


def test_usage_has_no_details_by_default(client, model_name):
    r = client.completions.create(model=model_name, prompt="Hello", max_tokens=2, temperature=0)
    assert r.usage.prompt_tokens_details is None


def test_the_flags_take_true_or_false(start_server, build_dir, model_path):
    import subprocess
    r = subprocess.run([str(build_dir / "bin" / "sparseserve"), "serve", "--model", str(model_path),
                        "--enable-prefix-caching", "yes"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "enable_prefix_caching" in r.stderr + r.stdout
