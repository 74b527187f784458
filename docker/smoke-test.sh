#!/usr/bin/env bash
# Builds the image and checks it serves: health check healthy, /v1/models, a chat completion over
# HTTP, Health and GetModelInfo over gRPC, and a clean exit (0) on `docker stop`. Needs a docker
# daemon, the ports 8000 and 50051 free on this host, and scripts/setup.sh's .venv (grpcio).
#   docker/smoke-test.sh [docker build args, e.g. --build-arg BASE_IMAGE=...]
set -euo pipefail
cd "$(dirname "$0")/.."
image=sparseserve:smoke
name=sparseserve-smoke-$$
docker build --network host -f docker/Dockerfile -t "$image" "$@" .
docker run -d --name "$name" --network host --stop-timeout 30 "$image" >/dev/null
trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT

for _ in $(seq 60); do
  [ "$(docker inspect --format '{{.State.Health.Status}}' "$name")" = healthy ] && break
  sleep 2
done
[ "$(docker inspect --format '{{.State.Health.Status}}' "$name")" = healthy ] || { docker logs "$name"; exit 1; }
echo "smoke: health check healthy"

.venv/bin/python - <<'PYEOF'
import json, subprocess, sys, tempfile, urllib.request
def post(path, body):
    req = urllib.request.Request("http://127.0.0.1:8000" + path, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=60))
models = json.load(urllib.request.urlopen("http://127.0.0.1:8000/v1/models", timeout=10))
assert models["data"][0]["id"] == "smollm2-135m-instruct", models
chat = post("/v1/chat/completions", {"messages": [{"role": "user", "content": "What is the capital of France?"}],
                                      "max_tokens": 12, "temperature": 0})
text = chat["choices"][0]["message"]["content"]
assert "Paris" in text, chat
print("smoke: HTTP chat:", text)
out = tempfile.mkdtemp()
subprocess.check_call([sys.executable, "-m", "grpc_tools.protoc", "-Iproto", f"--python_out={out}",
                       f"--grpc_python_out={out}", "proto/sparseserve.proto"])
sys.path.insert(0, out)
import grpc, sparseserve_pb2 as pb, sparseserve_pb2_grpc as pbg
stub = next(getattr(pbg, k) for k in dir(pbg) if k.endswith("Stub"))(grpc.insecure_channel("127.0.0.1:50051"))
stub.Health(pb.HealthRequest(), timeout=10)
info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
assert info.default_profile == "balanced", info
print("smoke: gRPC Health and GetModelInfo ok")
PYEOF

docker stop "$name" >/dev/null
code=$(docker inspect --format '{{.State.ExitCode}}' "$name")
[ "$code" = 0 ] || { docker logs "$name"; echo "smoke: exit code $code after docker stop" >&2; exit 1; }
echo "smoke: stopped cleanly; image $(docker images "$image" --format '{{.Size}}')"
