"""Prefix caching through the HTTP API of the real `sparseserve serve` (CPU backend): a chat request
whose system prompt an earlier request computed reports the cached tokens (usage.prompt_tokens_details
with --enable-prompt-tokens-details, the /metrics counters) and answers as a server without the cache
answers, under the dense profile and under the default `balanced` (streaming heads); usage leaves the
details out by default and on a miss, as vLLM; the flags take vLLM's forms."""
import subprocess
import time

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


@pytest.mark.parametrize("sparsity", ["dense", "balanced"])
def test_a_shared_system_prompt_is_cached_and_answers_as_without_the_cache(cached_server, start_server, sparsity):
    """`balanced`, the default profile, has streaming heads: the cache copies their window into the
    new sequence's ring."""
    before = cached_server.metrics()
    got = answers(cached_server, sparsity)
    after = cached_server.metrics()
    n_prompt = [r.usage.prompt_tokens for r in got]
    cached = [r.usage.prompt_tokens_details.cached_tokens if r.usage.prompt_tokens_details else 0 for r in got]
    assert got[0].usage.prompt_tokens_details is None  # a miss: none, as vLLM
    # The first computes everything; the others find the system prompt's whole 64-token blocks.
    assert cached[0] == 0
    for n, c in zip(n_prompt[1:], cached[1:]):
        assert c >= 64 and c % 64 == 0 and c < n
    assert after["sparseserve:prefix_cache_queries_total"] - before["sparseserve:prefix_cache_queries_total"] == sum(n_prompt)
    assert after["sparseserve:prefix_cache_hits_total"] - before["sparseserve:prefix_cache_hits_total"] == sum(cached)
    assert after["sparseserve:prompt_tokens_total"] - before["sparseserve:prompt_tokens_total"] == sum(n_prompt)

    plain = start_server(enable_prefix_caching="false", enable_prompt_tokens_details="true")
    try:
        want = answers(plain, sparsity)
        assert plain.metrics()["sparseserve:prefix_cache_queries_total"] == 0
    finally:
        plain.terminate()
    for r, w in zip(got, want):
        assert r.choices[0].message.content == w.choices[0].message.content
        assert w.usage.prompt_tokens_details is None
        lp = np.array([t.logprob for t in r.choices[0].logprobs.content])
        lw = np.array([t.logprob for t in w.choices[0].logprobs.content])
        np.testing.assert_allclose(lp, lw, atol=1e-4)


def test_a_cache_salt_keeps_tenants_apart(cached_server):
    with openai.OpenAI(base_url=cached_server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        def ask(question, salt):
            return c.chat.completions.create(
                model="smollm2-135m-instruct", temperature=0, max_tokens=4,
                messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
                extra_body={"sparsity": "dense", "cache_salt": salt}).usage.prompt_tokens_details
        first = ask(QUESTIONS[0], "tenant-a-3f9c2e")
        assert first is None  # not the blocks other tenants (or unsalted requests) computed
        assert ask(QUESTIONS[1], "tenant-a-3f9c2e").cached_tokens >= 64
        assert ask(QUESTIONS[1], "tenant-b-77d01a") is None
        with pytest.raises(openai.BadRequestError) as e:
            ask(QUESTIONS[0], "")
        assert e.value.body["param"] == "cache_salt"


def test_usage_has_no_details_by_default(client, model_name):
    r = client.completions.create(model=model_name, prompt="Hello", max_tokens=2, temperature=0)
    assert r.usage.prompt_tokens_details is None


def engine_line(build_dir, repo_root, *flags) -> str:
    """The engine's start line of `serve` with these flags (the server is stopped once it is logged)."""
    from ports import free_port
    cmd = [str(build_dir / "bin" / "sparseserve"), "serve", "--config", str(repo_root / "configs/server.yaml"),
           "--backend", "cpu", "--host", "127.0.0.1", "--http-port", str(free_port()), "--grpc-port", "0",
           "--kv-cache-bytes", "64MiB", *flags]
    p = subprocess.Popen(cmd, cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        for line in p.stdout:
            if "engine (cpu)" in line or time.monotonic() > deadline:
                return line
        return ""
    finally:
        p.kill()
        p.wait()


def test_the_flags_take_vllms_forms(build_dir, repo_root):
    assert "prefix caching on" in engine_line(build_dir, repo_root)
    assert "prefix caching on" in engine_line(build_dir, repo_root, "--enable-prefix-caching")
    assert "prefix caching off" in engine_line(build_dir, repo_root, "--no-enable-prefix-caching")
    assert "prefix caching off" in engine_line(build_dir, repo_root, "--enable-prefix-caching", "false")
    for flags, why in ((["--enable-prefix-caching", "yes"], "expected one of true | false"),
                       (["--enable-prefix-caching", "--no-enable-prefix-caching"], "excludes")):
        r = subprocess.run([str(build_dir / "bin" / "sparseserve"), "serve", "--config",
                            str(repo_root / "configs/server.yaml"), *flags], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0
        assert why in r.stderr + r.stdout


def test_a_prompt_cached_by_an_ended_request_and_computed_again_does_not_starve_a_lone_request(start_server):
    """A lone select-512 request over blocks an ended request had cached, in a pool that holds one such
    request: where it computed those blocks again, it held the cached pages beside its own copies,
    which the scheduler did not count, and ran out of pages at the same length after every preemption;
    the stream never ended (on 8f8a0bb). Now the cached entry moves onto the sequence's own pages
    (KvCachePrefix.ACachedPromptComputedAgainIsHeldOnce is the host-level test)."""
    srv = start_server(kv_cache_bytes="24MiB")  # one sequence of at most 640 tokens under `balanced`
    try:
        with openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", max_retries=0, timeout=90) as c:
            first = c.completions.create(model="smollm2-135m-instruct", prompt=[100] * 639, max_tokens=1,
                                         extra_body={"sparsity": "select-512"})
            assert first.usage.completion_tokens == 1
            finish, usage = None, None
            for chunk in c.completions.create(model="smollm2-135m-instruct", prompt=[100] * 300, max_tokens=300,
                                              stream=True, stream_options={"include_usage": True},
                                              extra_body={"sparsity": "select-512", "ignore_eos": True}):
                if chunk.choices:
                    finish = chunk.choices[0].finish_reason or finish
                usage = chunk.usage or usage
            assert finish == "length"
            assert usage.completion_tokens == 300
        m = srv.metrics()
        assert m["sparseserve:kv_pages_in_use"] == 0
        assert m["sparseserve:num_requests_running"] == 0
    finally:
        srv.terminate()
