"""Nothing is lost under a mixed load: one server, a KV cache small enough that requests are preempted,
and at once HTTP and gRPC clients of every kind (streaming and not, chat and completion, every
sparsity profile, n > 1 with stop strings and logprobs, clients that disconnect or cancel mid-stream,
deadlines, refused requests). Afterwards:
  - every request got a well-formed answer of its kind (a complete stream, a 4xx error object, a gRPC
    status), and none ended in an internal error;
  - the engine is idle and holds no KV page, with preemptions on the way (the cache really was short);
  - every greedy request that ran to its end produced the same tokens (and, echoed, the same prompt
    logprob tokens: none collected twice across a preemption) as when it runs alone;
  - the server still answers and exits 0 on SIGTERM.
"""
from __future__ import annotations

import json
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from ports import free_port

grpc = pytest.importorskip("grpc")
from conftest_grpc import api  # noqa: E402,F401  (the generated gRPC modules, a fixture)

pytest_plugins = ["conftest_server"]

PROFILES = ["dense", "balanced", "streaming-only", "select-512"]
WORDS = ("river stone lantern orchard copper meadow violet harbor thunder candle "
         "window marble falcon ember willow cobalt prairie summit velvet quartz").split()
JOBS = 32
WORKERS = 8
PRESSURE = 4  # the first jobs: see Load.pressure
CHOICES = ["alpha", "beta gamma", "delta"]  # gRPC jobs that answer with one of these
REGEX = r"[a-z]+( [a-z]+){0,3}\."  # or with a match of this


def prompt_of(rng: random.Random, words: int) -> str:
    return "Continue the list: " + " ".join(rng.choice(WORDS) for _ in range(words))


def sse_events(response: httpx.Response):
    """The JSON payloads of an SSE stream, then None for [DONE]."""
    for line in response.iter_lines():
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        yield None if data == "[DONE]" else json.loads(data)


class Load:
    """The clients; each job returns a record, greedy runs to completion carry what to replay alone."""

    def __init__(self, srv, stub, pb, model: str):
        self.srv, self.stub, self.pb, self.model = srv, stub, pb, model
        self.http = httpx.Client(base_url=srv.base_url, timeout=300)
        self.lock = threading.Lock()

    def completion_body(self, rng: random.Random, stream: bool) -> dict:
        ignore_eos = rng.random() < 0.5  # then it runs to max_tokens: decodes that grow into the cache
        body = {"model": self.model, "prompt": prompt_of(rng, rng.randint(5, 300)), "stream": stream,
                "max_tokens": rng.randint(60, 160) if ignore_eos else rng.randint(1, 40), "temperature": 0,
                "sparsity": rng.choice(PROFILES), "ignore_eos": ignore_eos}
        if rng.random() < 0.3:  # the prompt back with its logprobs: every prompt position's logits
            body.update(echo=True, logprobs=1)
        elif rng.random() < 0.25:  # JSON mode: its state lives across the preemptions
            body["response_format"] = {"type": "json_object"}
        return body

    def pressure(self, rng):
        """A long dense request run to max_tokens: the first PRESSURE jobs start together and outgrow
        the cache (each fits alone, two do not), so preemption happens whatever the timing. Echoed
        with logprobs: their prompt logprobs are collected across the preemptions, once."""
        body = {"model": self.model, "prompt": prompt_of(rng, 300), "stream": True, "max_tokens": 160,
                "temperature": 0, "sparsity": "dense", "ignore_eos": True, "echo": True, "logprobs": 1}
        return self.http_stream(rng, body)

    # -- HTTP --------------------------------------------------------------------------------------

    def http_stream(self, rng, body=None):
        body = body or self.completion_body(rng, stream=True)
        text, finish, tokens = "", None, []
        with self.http.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200, r.read()
            for ev in sse_events(r):
                if ev is None:
                    break
                choice = ev["choices"][0]
                text += choice["text"]
                if choice.get("logprobs"):
                    tokens += list(zip(choice["logprobs"]["tokens"], choice["logprobs"]["token_logprobs"]))
                finish = choice["finish_reason"] or finish
        assert finish in ("stop", "length"), finish
        if "response_format" in body and finish == "stop":
            assert isinstance(json.loads(text), dict), text
        return {"kind": "http_stream", "replay": ("http", body), "text": (text, tokens)}

    def http_disconnect(self, rng):
        body = self.completion_body(rng, stream=True)
        body["max_tokens"], body["ignore_eos"] = 400, True
        with httpx.Client(base_url=self.srv.base_url, timeout=300) as own:
            with own.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                events = sse_events(r)  # kept referenced: dropping it closes the stream
                for i, ev in enumerate(events):
                    if ev is None or i >= rng.randint(0, 3):
                        break
        return {"kind": "http_disconnect"}

    def http_chat_n(self, rng):
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt_of(rng, rng.randint(3, 60))}],
                "n": 2, "max_tokens": rng.randint(1, 24), "temperature": 0.8, "seed": rng.randint(0, 1 << 30),
                "stop": [".", "\n\n"], "logprobs": True, "top_logprobs": 2, "sparsity": rng.choice(PROFILES)}
        r = self.http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        choices = r.json()["choices"]
        assert sorted(c["index"] for c in choices) == [0, 1]
        for c in choices:
            assert c["finish_reason"] in ("stop", "length")
            assert "." not in c["message"]["content"]
        return {"kind": "http_chat_n"}

    def http_refused(self, rng):
        body = self.completion_body(rng, stream=rng.random() < 0.5)
        bad = rng.choice(["profile", "max_tokens", "context"])
        if bad == "profile":
            body["sparsity"] = "no-such-profile"
        elif bad == "max_tokens":
            body["max_tokens"] = -1
        else:
            body["max_tokens"] = 1 << 20
        r = self.http.post("/v1/completions", json=body)
        assert r.status_code in (400, 404), r.text
        assert r.json()["error"]["message"]
        return {"kind": "http_refused"}

    # -- gRPC --------------------------------------------------------------------------------------

    def grpc_request(self, rng, **over):
        pb = self.pb
        ignore_eos = rng.random() < 0.5
        kw = {"text": prompt_of(rng, rng.randint(5, 300)), "ignore_eos": ignore_eos,
              "max_tokens": rng.randint(60, 160) if ignore_eos else rng.randint(1, 40),
              "sampling": pb.SamplingParams(temperature=0), "sparsity": rng.choice(PROFILES)}
        if rng.random() < 0.2:
            kw["choices"] = CHOICES
        elif rng.random() < 0.2:
            kw["regex"] = REGEX
        kw.update(over)
        return pb.GenerateRequest(**kw)

    def grpc_full(self, rng):
        req = self.grpc_request(rng)
        msgs = list(self.stub.Generate(req, timeout=300))
        assert msgs and msgs[-1].HasField("final")
        if req.choices and msgs[-1].final.finish_reason == self.pb.FINISH_REASON_STOP:
            assert "".join(m.text for m in msgs) in CHOICES
        if req.regex and msgs[-1].final.finish_reason == self.pb.FINISH_REASON_STOP:
            assert re.fullmatch(REGEX, "".join(m.text for m in msgs))
        return {"kind": "grpc_full", "replay": ("grpc", req), "tokens": [t for m in msgs for t in m.token_ids]}

    def grpc_cancel(self, rng):
        call = self.stub.Generate(self.grpc_request(rng, max_tokens=400), timeout=300)
        try:
            for i, _ in enumerate(call):
                if i >= rng.randint(0, 3):
                    break
        finally:
            call.cancel()
        return {"kind": "grpc_cancel"}

    def grpc_deadline(self, rng):
        try:
            msgs = list(self.stub.Generate(self.grpc_request(rng, max_tokens=200), timeout=rng.uniform(0.05, 0.5)))
            assert msgs[-1].HasField("final")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
        return {"kind": "grpc_deadline"}

    def run(self, seed: int):
        rng = random.Random(seed)
        if seed < PRESSURE:
            return self.pressure(rng)
        job = rng.choices([self.http_stream, self.http_disconnect, self.http_chat_n, self.http_refused,
                           self.grpc_full, self.grpc_cancel, self.grpc_deadline],
                          weights=[4, 2, 2, 1, 4, 2, 1])[0]
        return job(rng)

    # -- alone -------------------------------------------------------------------------------------

    def replay(self, record):
        how, req = record["replay"]
        if how == "http":
            body = {**req, "stream": False}
            r = self.http.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text
            choice = r.json()["choices"][0]
            lp = choice["logprobs"]
            return choice["text"], list(zip(lp["tokens"], lp["token_logprobs"])) if lp else []
        return [t for m in self.stub.Generate(req, timeout=300) for t in m.token_ids]


def test_nothing_is_lost_under_a_mixed_load(start_server, api):  # noqa: F811
    pb, rpc = api
    grpc_port = free_port()
    # 40 MiB holds about 1280 tokens of one sequence under the balanced profile and about half that
    # under dense: eight requests of up to 500 tokens each do not fit at once.
    srv = start_server(grpc_port=grpc_port, kv_cache_bytes="40MiB", max_num_seqs=8, max_num_batched_tokens=256,
                       model_config="configs/models/smollm2-135m-instruct.yaml")
    model = httpx.get(srv.base_url + "/v1/models", timeout=10).json()["data"][0]["id"]
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub = rpc.SparseServeStub(channel)
    load = Load(srv, stub, pb, model)
    try:
        t0 = time.monotonic()
        with ThreadPoolExecutor(WORKERS) as pool:
            records = list(pool.map(load.run, range(JOBS)))
        loaded_s = time.monotonic() - t0

        # Idle, every page back, nothing failed inside, and the cache was short enough to preempt.
        deadline = time.monotonic() + 30
        while True:
            m = srv.metrics()
            if (m["sparseserve:num_requests_running"] == 0 and m["sparseserve:num_requests_waiting"] == 0
                    and m["sparseserve:kv_pages_in_use"] == 0):
                break
            assert time.monotonic() < deadline, f"not idle 30 s after the load: {m}\n{srv.log_tail()}"
            time.sleep(0.1)
        assert m['sparseserve:request_success_total{finished_reason="error"}'] == 0, srv.log_tail()
        assert m["sparseserve:num_preemptions_total"] > 0, "the KV cache never ran short: the load is too light"
        kinds = {r["kind"] for r in records}
        assert {"http_stream", "grpc_full", "grpc_cancel", "http_disconnect"} <= kinds, kinds

        # Greedy requests that ran to their end give the same tokens alone.
        replayed = [r for r in records if "replay" in r]
        assert len(replayed) >= 10
        for r in replayed:
            alone = load.replay(r)
            got = r["text"] if r["kind"] == "http_stream" else r["tokens"]
            assert got == alone, f"{r['kind']} under load differs from alone: {r['replay'][1]}"

        assert httpx.get(srv.base_url + "/health", timeout=10).status_code == 200
        print(f"mixed load: {JOBS} jobs in {loaded_s:.1f} s, {m['sparseserve:num_preemptions_total']:.0f} "
              f"preemptions, {len(replayed)} greedy replays equal")
    finally:
        load.http.close()
        channel.close()
    assert srv.terminate() == 0, srv.log_tail()
