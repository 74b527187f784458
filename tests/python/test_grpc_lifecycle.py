"""The gRPC server's limits and the life of its calls, against the real server binary on loopback:
server limits (prompt tokens, message and reply sizes, a small KV cache), aborts, client
cancellation, deadlines and clients that stop reading (each frees its request and KV pages), the API
key, and SIGTERM's drain. The server and the stubs come from conftest_grpc.py.
"""
from __future__ import annotations

import json
import signal
import socket
import struct
import time

import pytest

grpc = pytest.importorskip("grpc")
pytest.importorskip("grpc_tools")

from conftest_grpc import (collect, expect_invalid, greedy, launch_server, long_request, tokens_of,  # noqa: E402
                           wait_idle)
from hf_fixture import with_file  # noqa: E402

pytest_plugins = ["conftest_grpc"]


# ------------------------------------------------------------------------------------------------
# Server limits

def test_server_limits_hold_for_grpc_too(build_dir, model_path, repo_root, tmp_path_factory, api):
    # max_prompt_tokens and max_body_bytes, which the HTTP side enforces, hold for gRPC as well.
    s = launch_server(build_dir, model_path, repo_root, tmp_path_factory, api, max_prompt_tokens=100,
                      max_body_bytes="1MiB")
    try:
        pb = s.pb
        expect_invalid(s.stub, pb.GenerateRequest(text="hello " * 300, max_tokens=1), "more than this server accepts",
                       "100 tokens")
        with pytest.raises(grpc.RpcError) as e:
            collect(s.stub, pb.GenerateRequest(text="x" * (2 << 20), max_tokens=1))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
        assert tokens_of(collect(s.stub, pb.GenerateRequest(text="hello " * 50, max_tokens=1)))
    finally:
        s.stop()


def test_a_detokenize_text_past_the_reply_limit_is_invalid_argument(build_dir, model_path, repo_root,
                                                                    tmp_path_factory, api):
    # 1.1M tokens of 64 spaces: 70 MB of text, past the 64 MiB a reply holds. It was gRPC's own
    # RESOURCE_EXHAUSTED ("Sent message larger than max"), which the schema gives for "retry later".
    s = launch_server(build_dir, model_path, repo_root, tmp_path_factory, api, max_body_bytes="8MiB")
    try:
        pb = s.pb
        spaces = list(s.stub.Tokenize(pb.TokenizeRequest(text=" " * 64, add_special=False), timeout=5).token_ids)
        assert len(spaces) == 1
        with pytest.raises(grpc.RpcError) as e:
            s.stub.Detokenize(pb.DetokenizeRequest(token_ids=spaces * 1_100_000), timeout=120)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
        assert "over the 64 MiB a reply may hold" in e.value.details(), e.value.details()
        assert len(s.stub.Detokenize(pb.DetokenizeRequest(token_ids=spaces * 1000), timeout=30).text) == 64000
    finally:
        s.stop()


def test_a_kv_cache_under_the_context_limits_grpc_as_http(build_dir, model_path, repo_root, tmp_path_factory, api):
    # 8 MiB holds one dense sequence of 128 tokens: prompt + max_tokens over it is refused, as over
    # HTTP, and GetModelInfo's context_length is the default profile's limit (HTTP's max_model_len).
    s = launch_server(build_dir, model_path, repo_root, tmp_path_factory, api, kv_cache_bytes="8MiB")
    try:
        pb = s.pb
        info = s.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
        assert 128 <= info.context_length < 8192
        expect_invalid(s.stub, pb.GenerateRequest(text="Story 1:", max_tokens=150, sparsity="dense"),
                       "maximum context length is 128 tokens", "'dense'")
        expect_invalid(s.stub, pb.GenerateRequest(text="word " * 200, max_tokens=0, sparsity="dense"),
                       "maximum context length is 128 tokens")
        out = collect(s.stub, pb.GenerateRequest(text="Story 1:", max_tokens=100, sparsity="dense", ignore_eos=True))
        assert len(tokens_of(out)) == 100
    finally:
        s.stop()


# ------------------------------------------------------------------------------------------------
# Abort and cancellation

def test_abort_ends_the_stream_with_abort(stub, pb):
    call = stub.Generate(long_request(pb, "abort-me"), timeout=60)
    it = iter(call)
    first = next(it)
    assert first.request_id == "abort-me"
    # A second live request with the same id is refused.
    expect_invalid(stub, greedy(pb, max_tokens=2, request_id="abort-me"), "abort-me")
    assert stub.Abort(pb.AbortRequest(request_id="abort-me"), timeout=5).found
    rest = list(it)
    assert rest and rest[-1].HasField("final")
    assert rest[-1].final.finish_reason == pb.FINISH_REASON_ABORT
    assert rest[-1].final.usage.completion_tokens < 4000
    wait_idle(stub, pb)
    assert not stub.Abort(pb.AbortRequest(request_id="abort-me"), timeout=5).found
    assert not stub.Abort(pb.AbortRequest(request_id="never-seen"), timeout=5).found


def test_client_cancel_frees_the_request(stub, pb):
    call = stub.Generate(long_request(pb), timeout=60)
    it = iter(call)
    next(it)
    next(it)
    info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=5)
    assert info.requests_running >= 1 and info.kv_pages_in_use > 0
    call.cancel()
    with pytest.raises(grpc.RpcError) as e:
        list(it)
    assert e.value.code() == grpc.StatusCode.CANCELLED
    wait_idle(stub, pb)


class NeverReadingClient:
    """A bare HTTP/2 connection that grants no flow-control window (SETTINGS_INITIAL_WINDOW_SIZE 0):
    a client that never reads its replies, which no gRPC library lets one write."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        settings = struct.pack(">HI", 4, 0) + struct.pack(">HI", 2, 0)  # window 0, no push
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + self._frame(4, 0, 0, settings))

    @staticmethod
    def _frame(kind, flags, stream, payload):
        return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload

    @staticmethod
    def _header(name, value):  # HPACK literal without indexing, names and values under 127 bytes
        return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()

    def generate(self, request, stream=1):
        block = b"".join(self._header(k, v) for k, v in [
            (":method", "POST"), (":scheme", "http"), (":path", "/sparseserve.v1.SparseServe/Generate"),
            (":authority", "localhost"), ("content-type", "application/grpc"), ("te", "trailers")])
        body = request.SerializeToString()
        self.sock.sendall(self._frame(1, 4, stream, block) +  # HEADERS, END_HEADERS
                          self._frame(0, 1, stream, b"\x00" + struct.pack(">I", len(body)) + body))  # DATA, END_STREAM

    def close(self):
        self.sock.close()


def test_a_client_that_stops_reading_is_cancelled(build_dir, model_path, repo_root, tmp_path_factory, api):
    # The server's writes to a client that reads nothing block; the watchdog cancels the call after
    # grpc_write_stall_seconds, which frees the request and the server thread blocked in the write.
    pb = api[0]
    s = launch_server(build_dir, model_path, repo_root, tmp_path_factory, api, grpc_write_stall_seconds=1)
    client = NeverReadingClient(s.grpc_port)
    try:
        client.generate(long_request(pb))
        deadline = time.monotonic() + 10
        while s.stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=5).requests_running == 0:
            assert time.monotonic() < deadline, "the unread call never started"
            time.sleep(0.05)
        wait_idle(s.stub, pb, timeout=20)  # cancelled, though its connection is still open
        assert "cancelling its call" in s.log.read_text(errors="replace")
        collect(s.stub, greedy(pb, max_tokens=2))  # the server goes on serving
    finally:
        client.close()
        s.stop()


def test_client_deadline_frees_the_request(stub, pb):
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Generate(long_request(pb), timeout=1.0))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_idle(stub, pb)


# ------------------------------------------------------------------------------------------------
# API key

@pytest.fixture(scope="module")
def keyed_grpc_server(build_dir, model_path, repo_root, tmp_path_factory, api):
    s = launch_server(build_dir, model_path, repo_root, tmp_path_factory, api, api_key="sekret-key")
    yield s
    s.stop()


def test_api_key(keyed_grpc_server, pb):
    stub = keyed_grpc_server.stub
    # Health needs no key (for probes).
    assert stub.Health(pb.HealthRequest(), timeout=5).status == pb.HealthResponse.SERVING
    for metadata, code in [
        (None, grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer wrong"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("x-api-key", "wrong"),), grpc.StatusCode.UNAUTHENTICATED),
    ]:
        with pytest.raises(grpc.RpcError) as e:
            stub.Tokenize(pb.TokenizeRequest(text="hi"), metadata=metadata, timeout=5)
        assert e.value.code() == code
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Generate(greedy(pb, max_tokens=1), metadata=metadata, timeout=10))
        assert e.value.code() == code
    for metadata in [(("authorization", "Bearer sekret-key"),), (("x-api-key", "sekret-key"),)]:
        assert stub.Tokenize(pb.TokenizeRequest(text="hi"), metadata=metadata, timeout=5).token_ids
        msgs = list(stub.Generate(greedy(pb, max_tokens=1, ignore_eos=True), metadata=metadata, timeout=30))
        assert len(tokens_of(msgs)) == 1


# ------------------------------------------------------------------------------------------------
# Shutdown

def test_sigterm_drains_then_aborts_running_streams(build_dir, model_path, repo_root, tmp_path_factory, api):
    pb = api[0]
    s = launch_server(build_dir, model_path, repo_root, tmp_path_factory, api, shutdown_grace_seconds=3)
    try:
        it = iter(s.stub.Generate(long_request(pb), timeout=60))
        next(it)
        s.proc.send_signal(signal.SIGTERM)
        # During the grace period: Health says NOT_SERVING and new work is refused.
        deadline = time.monotonic() + 2.5
        while s.stub.Health(pb.HealthRequest(), timeout=5).status == pb.HealthResponse.SERVING:
            assert time.monotonic() < deadline, "Health stayed SERVING after SIGTERM"
            time.sleep(0.02)
        with pytest.raises(grpc.RpcError) as e:
            collect(s.stub, greedy(pb, max_tokens=1))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        # The running request is aborted at the end of the grace period; its call ends normally.
        rest = list(it)
        assert rest[-1].final.finish_reason == pb.FINISH_REASON_ABORT
        assert s.proc.wait(timeout=30) == 0
    finally:
        s.stop()


def test_the_models_max_new_tokens_caps_max_tokens_as_over_http(build_dir, hf_model_dir, repo_root, tmp_path_factory,
                                                                api, tmp_path):
    # generation_config.json's max_new_tokens caps a request's max_tokens, given or left out (vLLM's
    # get_max_tokens), as the HTTP side does (test_hf_model.py).
    gen = json.loads((hf_model_dir / "generation_config.json").read_text())
    d = with_file(tmp_path / "hf", hf_model_dir, "generation_config.json", json.dumps({**gen, "max_new_tokens": 3}))
    s = launch_server(build_dir, d, repo_root, tmp_path_factory, api)
    try:
        pb = s.pb
        for max_tokens in [8, None]:
            kw = {} if max_tokens is None else {"max_tokens": max_tokens}
            msgs = collect(s.stub, pb.GenerateRequest(text="The sea is", ignore_eos=True,
                                                      sampling=pb.SamplingParams(temperature=0), **kw))
            assert len(tokens_of(msgs)) == 3, max_tokens
            assert msgs[-1].final.finish_reason == pb.FINISH_REASON_LENGTH
    finally:
        s.stop()
