"""Smoke run of the passkey accuracy benchmark (bench/passkey_bench.cc): the full runs (1K-8K
contexts, 20 trials, every profile) live in bench/RESULTS.md; here two short trials check that
every profile runs end to end and that dense attention finds the key at a context it handles."""
import re
import subprocess


def test_passkey_bench_smoke(tool, repo_root, model_path):
    out = subprocess.run([str(tool("passkey_bench")), "--model", str(model_path),
                          "--model-config", str(repo_root / "configs/models/smollm2-135m-instruct.yaml"),
                          "--contexts", "512", "--trials", "2"],
                         check=True, capture_output=True, text=True, timeout=900)
    rows = {m.group(1).strip(): (int(m.group(2)), float(m.group(4)))
            for m in re.finditer(r"^\| ([^|]+) \| (\d+)% \| ([\d.]+) \| ([\d.]+)x less \|$", out.stdout, re.M)}
    assert set(rows) == {"dense", "streaming-only (calibrated)", "select-512", "select-1024",
                         "streaming-only (random heads)"}, out.stdout
    assert rows["dense"][0] >= 50
    assert rows["streaming-only (calibrated)"][1] > 1.0  # streaming heads hold less KV than dense
