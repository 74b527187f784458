"""pytest plugin for the HTTP tests (test_http_*.py load it with `pytest_plugins = ["conftest_server"]`):
the real `sparseserve serve` binary on a free loopback port with the default model and small limits.

Fixtures:
  server          session-wide server (no API key); stopped with SIGTERM at the end of the session
  keyed_server    session-wide server that requires the API key KEYED_SERVER_KEY
  start_server    factory for a private server (the caller stops it); kwargs become flags
  client          openai.OpenAI on `server`;  http: httpx.Client on `server`
Helpers: stream_text (an SDK stream's texts and finish reasons by choice).
Environment (see conftest.py): SPARSESERVE_BUILD (bin/sparseserve), SPARSESERVE_MODEL.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]

KEYED_SERVER_KEY = "test-key-123"
# Small limits keep the tests quick and let them reach every limit on purpose.
DEFAULT_FLAGS = {
    "host": "127.0.0.1",
    "grpc_port": "0",
    "kv_cache_bytes": "256MiB",
    "max_num_seqs": "64",
    "max_num_batched_tokens": "1024",
    "max_waiting": "256",
    "max_body_bytes": "1MiB",
    "max_prompt_tokens": "2048",
    "shutdown_grace_seconds": "5",
    "log_level": "info",
}


class ServerProcess:
    """One `sparseserve serve` process; the log goes to a file shown when something fails."""

    def __init__(self, binary: Path, model: Path, log_path: Path, **flags: str):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.api_key = flags.get("api_key")
        args = {**DEFAULT_FLAGS, "model": str(model), **{k: str(v) for k, v in flags.items()}}
        args["http_port"] = str(self.port)
        cmd = [str(binary), "serve", "--config", str(REPO_ROOT / "configs/server.yaml")]
        for key, value in args.items():
            cmd += ["--" + key.replace("_", "-"), value]
        self._log = open(log_path, "wb")
        # Passive OpenMP waits, as scripts/test.sh sets: the server shares two cores with its clients.
        env = {**os.environ}
        env.setdefault("OMP_WAIT_POLICY", "passive")
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log_tail()}")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit status (SIGKILL and an error when it does not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"server did not exit within {timeout} s of SIGTERM:\n{self.log_tail()}")
        self._log.close()
        return self.proc.returncode

    def metrics(self) -> dict[str, float]:
        """/metrics as {series: value}, the model_name label left out: 'sparseserve:num_requests_running',
        'sparseserve:kv_pages_used{role="retrieval"}'."""
        text = httpx.get(self.base_url + "/metrics", timeout=10).text
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            series, value = line.rsplit(" ", 1)
            series = re.sub(r'model_name="[^"]*",?', "", series).replace("{}", "")
            out[series] = float(value)
        return out


def _binary(build_dir: Path) -> Path:
    p = build_dir / "bin" / "sparseserve"
    if not p.is_file():
        pytest.fail(f"{p} is not built: ninja -C {build_dir} sparseserve (or set SPARSESERVE_BUILD)")
    return p


@pytest.fixture(scope="session")
def start_server(build_dir, model_path, tmp_path_factory):
    """start_server(**flags) -> a ready ServerProcess; the caller terminates it (or the session does)."""
    started: list[ServerProcess] = []

    def start(**flags) -> ServerProcess:
        log = tmp_path_factory.mktemp("server") / "server.log"
        srv = ServerProcess(_binary(build_dir), model_path, log, **flags)
        started.append(srv)
        try:
            srv.wait_ready()
        except RuntimeError as e:
            srv.proc.kill()
            pytest.fail(str(e))
        return srv

    yield start
    for srv in started:
        if srv.proc.poll() is None:
            srv.terminate()


@pytest.fixture(scope="session")
def server(start_server):
    srv = start_server()
    yield srv
    rc = srv.terminate()
    assert rc == 0, f"server exited with {rc} after SIGTERM:\n{srv.log_tail()}"


@pytest.fixture(scope="session")
def keyed_server(start_server):
    srv = start_server(api_key=KEYED_SERVER_KEY)
    yield srv
    srv.terminate()


@pytest.fixture(scope="session")
def model_name(server) -> str:
    return httpx.get(server.base_url + "/v1/models", timeout=10).json()["data"][0]["id"]


@pytest.fixture(scope="session")
def client(server):
    import openai

    with openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=120) as c:
        yield c


def stream_text(chunks, chat=False):
    """Assembles a stream: {choice index: text}, {index: finish_reason}, and the chunks."""
    texts, finish, seen = {}, {}, []
    for ch in chunks:
        seen.append(ch)
        for c in ch.choices:
            piece = (c.delta.content or "") if chat else c.text
            texts[c.index] = texts.get(c.index, "") + piece
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    return texts, finish, seen
