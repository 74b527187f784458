"""pytest plugin for the gRPC tests (test_grpc*.py load it with `pytest_plugins = ["conftest_grpc"]`):
the real `sparseserve serve` binary with the default model and its sparsity profiles on free loopback
ports, and Python stubs generated from proto/sparseserve.proto at test time (grpc_tools.protoc into
a temporary folder; nothing generated is committed).

Fixtures (each test module gets its own server):
  api          (pb, rpc): the generated message and stub modules;  pb: the messages
  grpc_server  a ServerProcess; stopped with SIGTERM (it must exit 0) after the module
  stub         a stub on grpc_server;  model_info: its GetModelInfo
Helpers: launch_server (a private server, the caller stops it), greedy, collect, tokens_of, text_of,
expect_invalid, wait_idle, long_request. Environment (see conftest.py): SPARSESERVE_BUILD, SPARSESERVE_MODEL.
The test modules skip themselves when grpcio or grpcio-tools is missing, before importing this.
"""
from __future__ import annotations

import importlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from ports import free_port

MODEL_CONFIG = "configs/models/smollm2-135m-instruct.yaml"
PROMPT = "The capital of France is"
START_TIMEOUT_S = 60
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20),
                   ("grpc.max_send_message_length", 64 << 20)]


# ------------------------------------------------------------------------------------------------
# Stubs and server fixtures

@pytest.fixture(scope="module")
def api(repo_root, tmp_path_factory):
    """(pb, rpc): the generated message and stub modules."""
    out = tmp_path_factory.mktemp("grpc_stubs")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{repo_root / 'proto'}",
                    f"--python_out={out}", f"--grpc_python_out={out}",
                    str(repo_root / "proto" / "sparseserve.proto")], check=True)
    sys.path.insert(0, str(out))
    try:
        pb = importlib.import_module("sparseserve_pb2")
        rpc = importlib.import_module("sparseserve_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return pb, rpc


class ServerProcess:
    """A `sparseserve serve` process with a stub on its gRPC port."""

    def __init__(self, binary: Path, model: Path, repo_root: Path, log: Path, rpc, pb, **flags):
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.rpc, self.pb = rpc, pb
        self.log = log
        cmd = [str(binary), "serve", "--model", str(model), "--model-config", str(repo_root / MODEL_CONFIG),
               "--host", "127.0.0.1", "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port)]
        for key, value in {"kv_cache_bytes": "256MiB", "shutdown_grace_seconds": 5, **flags}.items():
            cmd += ["--" + key.replace("_", "-"), str(value)]
        self._log = log.open("wb")
        self.proc = subprocess.Popen(cmd, cwd=repo_root, stdout=self._log, stderr=subprocess.STDOUT)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}", options=CHANNEL_OPTIONS)
        self.stub = rpc.SparseServeStub(self.channel)
        self._wait_serving()

    def _wait_serving(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.fail(f"the server exited with {self.proc.returncode} while starting")
            try:
                # wait_for_ready: a fail-fast call would keep failing on the channel's cached
                # connection error from before the server listened.
                health = self.stub.Health(self.pb.HealthRequest(), timeout=1, wait_for_ready=True)
                if health.status == self.pb.HealthResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        self.fail(f"gRPC Health was not SERVING within {START_TIMEOUT_S} s")

    def fail(self, why: str):
        self.stop()
        tail = self.log.read_text(errors="replace")[-3000:]
        pytest.fail(f"{why}; server log:\n{tail}")

    def stop(self):
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def launch_server(build_dir, model_path, repo_root, tmp_path_factory, api, **flags) -> ServerProcess:
    """A ready server; flags (YAML key names) are added to the command line."""
    binary = build_dir / "bin" / "sparseserve"
    if not binary.is_file():
        pytest.fail(f"{binary} is not built: ninja -C {build_dir} sparseserve")
    pb, rpc = api
    log = tmp_path_factory.mktemp("grpc_server") / "server.log"
    return ServerProcess(binary, model_path, repo_root, log, rpc, pb, **flags)


@pytest.fixture(scope="module")
def grpc_server(build_dir, model_path, repo_root, tmp_path_factory, api):
    s = launch_server(build_dir, model_path, repo_root, tmp_path_factory, api)
    yield s
    s.stop()
    assert s.proc.returncode == 0, f"the server exited with {s.proc.returncode} on SIGTERM"


@pytest.fixture(scope="module")
def pb(api):
    return api[0]


@pytest.fixture(scope="module")
def stub(grpc_server):
    return grpc_server.stub


@pytest.fixture(scope="module")
def model_info(stub, pb):
    return stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)


# ------------------------------------------------------------------------------------------------
# Helpers

def greedy(pb, max_tokens=8, **kw):
    """A greedy request; the prompt is PROMPT unless token_ids or chat is given."""
    if "token_ids" not in kw and "chat" not in kw:
        kw.setdefault("text", PROMPT)
    return pb.GenerateRequest(max_tokens=max_tokens, sampling=pb.SamplingParams(temperature=0), **kw)


def collect(stub, req, timeout=60):
    """All messages of one Generate call; checks that exactly the last one carries `final`."""
    msgs = list(stub.Generate(req, timeout=timeout))
    assert msgs, "empty stream"
    assert msgs[-1].HasField("final")
    assert not any(m.HasField("final") for m in msgs[:-1])
    assert len({m.request_id for m in msgs}) == 1
    return msgs


def tokens_of(msgs):
    return [t for m in msgs for t in m.token_ids]


def text_of(msgs):
    return "".join(m.text for m in msgs)


def expect_invalid(stub, req, *needles):
    with pytest.raises(grpc.RpcError) as e:
        collect(stub, req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    details = e.value.details()
    for needle in needles:
        assert needle in details, f"{needle!r} not in {details!r}"
    return details


def wait_idle(stub, pb, timeout=15.0):
    """Polls GetServerInfo until no request runs or waits and no KV page is held."""
    deadline = time.monotonic() + timeout
    info = None
    while time.monotonic() < deadline:
        info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=5)
        if info.requests_running == 0 and info.requests_waiting == 0 and info.kv_pages_in_use == 0:
            return info
        time.sleep(0.05)
    pytest.fail(f"the engine did not become idle within {timeout} s: {info}")


def long_request(pb, request_id=None):
    """A greedy request of 4000 tokens that ignores EOS: it runs until it is stopped."""
    kw = {"request_id": request_id} if request_id else {}
    return greedy(pb, max_tokens=4000, ignore_eos=True, **kw)
