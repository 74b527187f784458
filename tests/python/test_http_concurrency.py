"""Many clients at once, clients that leave, and shutdown, against the real `sparseserve serve`:
  - 64 concurrent streaming clients (greedy) get the same text as the same requests run one at a time;
  - a client that closes its connection mid-stream has its request cancelled and its KV pages freed;
  - SIGTERM lets a request in flight end within the grace period and the process exits 0, and a body
    still arriving does not hold it longer."""
import asyncio
import json
import signal
import socket
import threading
import time

import httpx
import openai
import pytest

pytest_plugins = ["conftest_server"]

# (kind, input): short prompts and 16 new tokens keep the whole run under a minute on two cores.
REQUESTS = [
    ("completion", "The capital of France is"),
    ("completion", "1, 2, 3, 4,"),
    ("chat", "Name a fruit."),
    ("chat", "Say hello."),
]
MAX_TOKENS = 16


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def test_64_concurrent_streams_match_one_at_a_time(client, server, model_name):
    ref = {}
    for kind, text in REQUESTS:
        if kind == "chat":
            r = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": text}],
                                               max_tokens=MAX_TOKENS, temperature=0)
            ref[text] = r.choices[0].message.content
        else:
            r = client.completions.create(model=model_name, prompt=text, max_tokens=MAX_TOKENS, temperature=0)
            ref[text] = r.choices[0].text

    async def one(ac, i):
        kind, text = REQUESTS[i % len(REQUESTS)]
        out = ""
        if kind == "chat":
            stream = await ac.chat.completions.create(model=model_name, messages=[{"role": "user", "content": text}],
                                                      max_tokens=MAX_TOKENS, temperature=0, stream=True)
            async for ch in stream:
                out += "".join(c.delta.content or "" for c in ch.choices)
        else:
            stream = await ac.completions.create(model=model_name, prompt=text, max_tokens=MAX_TOKENS, temperature=0,
                                                 stream=True)
            async for ch in stream:
                out += "".join(c.text for c in ch.choices)
        return text, out

    async def run_all():
        async with openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0,
                                      timeout=300) as ac:
            return await asyncio.gather(*(one(ac, i) for i in range(64)))

    t0 = time.monotonic()
    results = asyncio.run(run_all())
    elapsed = time.monotonic() - t0
    assert len(results) == 64
    wrong = [(i, text, out, ref[text]) for i, (text, out) in enumerate(results) if out != ref[text]]
    assert not wrong, f"{len(wrong)} of 64 streams differ from the sequential run, e.g. {wrong[0]}"
    m = wait_for(lambda: (lambda m: m if m["sparseserve:num_requests_running"] == 0 else None)(server.metrics()), 10,
                 "no running requests")
    assert m["sparseserve:kv_pages_in_use"] == 0
    print(f"64 concurrent streams in {elapsed:.1f} s")


def test_client_disconnect_cancels_request(server, model_name):
    before = server.metrics()
    aborted_before = before['sparseserve:request_success_total{finished_reason="abort"}']
    body = {"model": model_name, "prompt": "Tell me a very long story.", "max_tokens": 4000, "temperature": 0,
            "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        with http.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            chunks = 0
            lines = r.iter_lines()  # kept referenced: a dropped iterator closes the stream (= disconnects)
            for line in lines:
                chunks += line.startswith("data: {")
                if chunks >= 3:
                    break
            m = server.metrics()
            assert m["sparseserve:num_requests_running"] >= 1
            assert m["sparseserve:kv_pages_in_use"] > 0
        # Leaving the block closes the connection mid-stream.
    m = wait_for(lambda: (lambda m: m if m["sparseserve:num_requests_running"] == 0
                          and m["sparseserve:kv_pages_in_use"] == before["sparseserve:kv_pages_in_use"] else None)(
        server.metrics()), 20, "the cancelled request to free its pages")
    assert m['sparseserve:request_success_total{finished_reason="abort"}'] == aborted_before + 1
    assert m["sparseserve:generation_tokens_total"] < before["sparseserve:generation_tokens_total"] + 4000


def test_client_disconnect_cancels_non_streaming_request(server, model_name):
    # A non-streaming request writes nothing until its answer: the server notices the closed socket.
    before = server.metrics()
    aborted_before = before['sparseserve:request_success_total{finished_reason="abort"}']
    body = json.dumps({"model": model_name, "prompt": "Tell me a very long story.", "max_tokens": 4000,
                       "temperature": 0, "ignore_eos": True}).encode()
    host, port = server.base_url.split("//")[1].split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        wait_for(lambda: server.metrics()["sparseserve:num_requests_running"] >= 1, 20, "the request to start")
    m = wait_for(lambda: (lambda m: m if m["sparseserve:num_requests_running"] == 0
                          and m["sparseserve:kv_pages_in_use"] == before["sparseserve:kv_pages_in_use"] else None)(
        server.metrics()), 20, "the abandoned request to free its pages")
    assert m['sparseserve:request_success_total{finished_reason="abort"}'] == aborted_before + 1
    assert m["sparseserve:generation_tokens_total"] < before["sparseserve:generation_tokens_total"] + 4000


def test_sigterm_lets_requests_end_and_exits_zero(start_server, model_name):
    grace = 3.0
    srv = start_server(shutdown_grace_seconds=grace)
    got = {}

    def stream_long_request():
        body = {"model": model_name, "prompt": "Count to a thousand:", "max_tokens": 4000, "temperature": 0,
                "ignore_eos": True, "stream": True}
        try:
            with httpx.stream("POST", srv.base_url + "/v1/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    if line == "data: [DONE]":
                        got["done"] = True
                    elif line.startswith("data: "):
                        chunk = json.loads(line[6:])
                        got.setdefault("first", True)
                        if chunk["choices"] and chunk["choices"][0]["finish_reason"]:
                            got["finish"] = chunk["choices"][0]["finish_reason"]
        except httpx.HTTPError as e:
            got["error"] = repr(e)

    t = threading.Thread(target=stream_long_request)
    t.start()
    wait_for(lambda: "first" in got, 60, "the first streamed token")

    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)

    def draining():
        try:
            return httpx.get(srv.base_url + "/health", timeout=2).status_code == 503
        except httpx.HTTPError:
            return True  # already gone
    wait_for(draining, 5, "/health to answer 503 after SIGTERM")
    try:
        r = httpx.post(srv.base_url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=5)
        assert r.status_code == 503 and r.json()["error"]["code"] in ("shutting_down", "engine_unavailable")
    except httpx.HTTPError:
        pass  # already gone

    rc = srv.proc.wait(timeout=grace + 20)
    elapsed = time.monotonic() - t0
    t.join(10)
    assert rc == 0, srv.log_tail()
    assert elapsed < grace + 5, f"exit took {elapsed:.1f} s with a grace of {grace} s"
    assert "error" not in got, got
    assert got.get("done") and got.get("finish") == "abort", got


def test_second_sigterm_exits_at_once(start_server, model_name):
    # The first SIGTERM drains (here a 60 s grace a running stream could use); a second one exits
    # now, with status 1, and says so.
    srv = start_server(shutdown_grace_seconds=60)
    body = {"model": model_name, "prompt": "Count to a thousand:", "max_tokens": 4000, "temperature": 0,
            "ignore_eos": True, "stream": True}
    with httpx.stream("POST", srv.base_url + "/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: {"))
        srv.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "SIGTERM: shutting down" in srv.log_tail(10000), 10, "the drain to start")
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        rc = srv.proc.wait(timeout=10)
    assert rc == 1, srv.log_tail()
    assert time.monotonic() - t0 < 5
    assert "second SIGTERM" in srv.log_tail(10000) and "exiting now" in srv.log_tail(10000)


def test_queue_full_is_429(start_server, model_name):
    srv = start_server(max_num_seqs=1, max_waiting=1)
    body = {"model": model_name, "prompt": "Count to a thousand:", "max_tokens": 4000, "temperature": 0,
            "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=srv.base_url, timeout=60) as a, httpx.Client(base_url=srv.base_url, timeout=60) as b:
        with a.stream("POST", "/v1/completions", json=body) as running:
            running_lines = running.iter_lines()  # kept referenced: dropping it would disconnect
            next(line for line in running_lines if line.startswith("data: {"))
            with b.stream("POST", "/v1/completions", json=body) as waiting:
                assert waiting.status_code == 200
                r = httpx.post(srv.base_url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=30)
                assert r.status_code == 429, r.text
                err = r.json()["error"]
                assert set(err) == {"message", "type", "param", "code"} and err["code"] == "queue_full"
    # More choices than the queue holds could never all be queued: 400 naming n, not 429 on every retry.
    r = httpx.post(srv.base_url + "/v1/completions", json={"prompt": "x", "max_tokens": 1, "n": 2}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "n"
    r = httpx.post(srv.base_url + "/v1/completions", json={"prompt": "x", "max_tokens": 1, "n": 1}, timeout=30)
    assert r.status_code == 200, r.text
    assert srv.terminate() == 0, srv.log_tail()


def test_a_body_still_arriving_does_not_hold_the_shutdown(start_server, model_name):
    # A client sending its body a byte every 0.2 s held stop() for as long as it kept sending (each
    # read has its own 30 s timeout); now the body's next piece after SIGTERM ends it with a 503.
    srv = start_server(shutdown_grace_seconds=1)
    body = json.dumps({"model": model_name, "prompt": "x" * 400, "max_tokens": 1}).encode()
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
    stop = threading.Event()

    def trickle():
        for i in range(10, len(body)):
            if stop.wait(0.2):
                return
            try:
                sock.sendall(body[i:i + 1])
            except OSError:
                return
    t = threading.Thread(target=trickle)
    t.start()
    try:
        time.sleep(1)
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        rc = srv.proc.wait(timeout=30)
        elapsed = time.monotonic() - t0
        assert rc == 0, srv.log_tail()
        assert elapsed < 6, f"exit took {elapsed:.1f} s with a grace of 1 s"
        sock.settimeout(5)
        assert sock.recv(4096).startswith(b"HTTP/1.1 503"), srv.log_tail()
    finally:
        stop.set()
        t.join(5)
        sock.close()
