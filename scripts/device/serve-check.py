#!/usr/bin/env python3
"""The server end to end on the GPU: `sparseserve serve --backend cuda` against `--backend cpu` on the
same model, over HTTP (standard library only: the GPU machine has no test venv).

Both servers get the same greedy requests (completions and chat, short and long prompts, 16 at once,
streamed and not) under three sparsity profiles of the shipped model YAML, cut to the model's
blocks: dense, balanced (the DuoAttention head split: half the heads stream) and select-512 (the split
plus decode page selection). Each reply of the CUDA server is compared with the CPU server's token by
token:
  - where the tokens agree, the logprobs must agree within --tol (bf16 against fp32);
  - where they first differ, the CPU must rate the CUDA server's token within --tie of its own
    choice (a near tie that rounding decided); after that the texts are different and not compared.
  Page selection is a discrete choice that rounding can flip where two pages score alike, so its
  profile is held to --select-tol and --select-tie instead.
Then: a streamed reply equals the unstreamed one, every KV page is back (kv_pages_in_use 0), and a
request for an unknown profile is a 400 with the OpenAI error object.

Usage: serve-check.py --bin sparseserve --model M.gguf [--out DIR]   (run from the repository root:
it reads configs/models/smollm2-135m-instruct.yaml and its head pattern)
Exit status 0 when every check passed; the figures are printed and written to DIR/serve-check.json.
"""
import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_cut import cut_model_config  # noqa: E402


def post(port, path, body, timeout=300):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return r.read().decode()


def start(binary, model, model_config, backend, port, out):
    log = open(os.path.join(out, f"serve-{backend}-{port}.log"), "w")
    p = subprocess.Popen([binary, "serve", "--model", model, "--model-config", model_config, "--backend", backend,
                          "--http-port", str(port), "--grpc-port", "0", "--kv-cache-bytes", "2GiB",
                          "--max-num-seqs", "32"],
                         stdout=log, stderr=subprocess.STDOUT)
    for _ in range(600):
        if p.poll() is not None:
            raise SystemExit(f"serve-check: the {backend} server exited ({p.returncode}); see serve-{backend}-{port}.log")
        try:
            if get(port, "/health") is not None:
                return p
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"serve-check: the {backend} server did not come up")


def completion_tokens(reply):
    """(tokens, logprobs, top) of a /v1/completions or /v1/chat/completions reply."""
    choice = reply["choices"][0]
    lp = choice["logprobs"]
    if "content" in lp:  # chat
        return ([e["token"] for e in lp["content"]], [e["logprob"] for e in lp["content"]],
                [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in lp["content"]])
    return lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]


def compare(cpu, gpu):
    ct, cl, ctop = completion_tokens(cpu)
    gt, gl, _ = completion_tokens(gpu)
    errors = []
    for i, (a, b) in enumerate(zip(ct, gt)):
        if a != b:
            gap = cl[i] - ctop[i].get(b, float("-inf"))  # how much less likely the CPU rates the GPU's token
            return {"agree": i, "of": len(ct), "errors": errors, "tie_gap": gap}
        errors.append(abs(cl[i] - gl[i]))
    return {"agree": min(len(ct), len(gt)), "of": len(ct), "errors": errors, "tie_gap": 0.0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default="/tmp/serve-check")
    ap.add_argument("--tol", type=float, default=0.15, help="largest |logprob difference| where tokens agree")
    ap.add_argument("--tie", type=float, default=0.5, help="largest CPU logprob gap at the first differing token")
    ap.add_argument("--select-tol", type=float, default=0.5)
    ap.add_argument("--select-tie", type=float, default=1.0)
    ap.add_argument("--backend", default="cuda", help="the backend checked against cpu (cpu: the script's own check)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    cpu_port, gpu_port = 8101, 8102
    blocks = int(json.loads(subprocess.run([a.bin, "info", "--model", a.model, "--json"], capture_output=True,
                                           text=True, check=True).stdout)["layers"])
    config = cut_model_config(blocks, a.out)
    servers = [start(a.bin, a.model, config, "cpu", cpu_port, a.out),
               start(a.bin, a.model, config, a.backend, gpu_port, a.out)]
    failures = []
    try:
        texts = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a small village,",
                 "1, 2, 3, 4, 5,", "Water boils at a temperature of", "The quick brown fox"]
        long_text = " ".join(["The history of the region spans many centuries of trade, war and migration."] * 120)
        profiles = ["dense", "balanced", "select-512"]
        jobs = []
        for prof in profiles:
            bodies = [{"prompt": t, "max_tokens": 32} for t in texts]
            bodies.append({"prompt": long_text + " In summary,", "max_tokens": 32})
            bodies.append({"prompt": long_text[: len(long_text) // 3] + " Therefore", "max_tokens": 48})
            if prof == "dense":
                bodies += [{"prompt": f"Item {i}: a list of {i} things to remember is", "max_tokens": 24}
                           for i in range(16)]
            for b in bodies:
                jobs.append(("/v1/completions", dict(b, temperature=0, logprobs=5, sparsity=prof)))
            for q in ["What is the capital of France?", "Write a haiku about the sea."]:
                jobs.append(("/v1/chat/completions",
                             {"messages": [{"role": "user", "content": q}], "max_tokens": 32, "temperature": 0,
                              "logprobs": True, "top_logprobs": 5, "sparsity": prof}))

        def both(job):
            path, body = job
            results = []
            for port in (cpu_port, gpu_port):
                status, text = post(port, path, body)
                if status != 200:
                    raise RuntimeError(f"{path} on port {port}: {status} {text[:300]}")
                results.append(json.loads(text))
            return results

        t0 = time.time()
        with cf.ThreadPoolExecutor(16) as pool:  # up to 16 requests at once on each server
            pairs = list(pool.map(both, jobs))
        wall = time.time() - t0
        rows, all_errors = [], {p: [] for p in profiles}
        for (path, body), (cpu, gpu) in zip(jobs, pairs):
            c = compare(cpu, gpu)
            prof = body["sparsity"]
            all_errors[prof] += c["errors"]
            worst = max(c["errors"], default=0.0)
            tol, tie = (a.select_tol, a.select_tie) if prof.startswith("select") else (a.tol, a.tie)
            ok = worst <= tol and c["tie_gap"] <= tie
            prompt = body.get("prompt") or body["messages"][0]["content"]
            rows.append({"path": path, "profile": prof, "prompt": prompt[:32], "agree": c["agree"], "of": c["of"],
                         "worst_error": worst, "tie_gap": c["tie_gap"], "ok": ok})
            if not ok:
                failures.append(f"{path} {prof} {rows[-1]['prompt']!r}: worst logprob error {worst:.3f}, "
                                f"tie gap {c['tie_gap']:.3f}")
        for r in rows:
            print(f"{'ok ' if r['ok'] else 'BAD'} {r['path']:20s} {r['profile']:10s} {r['prompt']!r:36s} "
                  f"agree {r['agree']:2d}/{r['of']:2d}  worst |dlp| {r['worst_error']:.4f}  tie gap {r['tie_gap']:.3f}")
        summary = {}
        for prof in profiles:
            mine = [r for r in rows if r["profile"] == prof]
            errs = all_errors[prof]
            summary[prof] = {"requests": len(mine), "identical": sum(r["agree"] == r["of"] for r in mine),
                             "tokens": len(errs), "mean_error": sum(errs) / max(1, len(errs)),
                             "worst_error": max(errs, default=0.0)}
            m = summary[prof]
            print(f"{prof}: {m['requests']} requests, {m['identical']} identical to the CPU's; logprobs over "
                  f"{m['tokens']} agreeing tokens: mean |dlp| {m['mean_error']:.4f}, worst {m['worst_error']:.4f}")
        print(f"{len(rows)} requests in {wall:.1f} s (both servers)")

        # A streamed reply carries the same text as the unstreamed one.
        body = {"prompt": texts[0], "max_tokens": 32, "temperature": 0, "stream": True}
        status, sse = post(gpu_port, "/v1/completions", body)
        streamed = "".join(json.loads(line[6:])["choices"][0]["text"] for line in sse.splitlines()
                           if line.startswith("data: {"))
        plain = json.loads(post(gpu_port, "/v1/completions", dict(body, stream=False))[1])["choices"][0]["text"]
        if status != 200 or streamed != plain:
            failures.append(f"streamed text {streamed!r} != unstreamed {plain!r} (status {status})")
        # Tokens drawn on the device (no logprobs, nothing for the host to apply) are the host sampler's
        # greedy tokens over the same logits: each request alone, with and without logprobs.
        for t in texts[:3]:
            body = {"prompt": t, "max_tokens": 32, "temperature": 0, "sparsity": "balanced"}
            plain = json.loads(post(gpu_port, "/v1/completions", body)[1])["choices"][0]["text"]
            with_lp = json.loads(post(gpu_port, "/v1/completions", dict(body, logprobs=1))[1])["choices"][0]["text"]
            if plain != with_lp:
                failures.append(f"greedy drawn on the device {plain!r} != sampled on the host {with_lp!r}")
        # An unknown profile is refused with the OpenAI error object.
        status, text = post(gpu_port, "/v1/completions", {"prompt": "x", "max_tokens": 1, "sparsity": "no-such"})
        if status != 400 or "error" not in json.loads(text):
            failures.append(f"unknown profile: {status} {text[:200]}")
        metrics = get(gpu_port, "/metrics")
        in_use = [ln for ln in metrics.splitlines() if ln.startswith("sparseserve:kv_pages_in_use")]
        if not in_use or float(in_use[0].split()[-1]) != 0:
            failures.append(f"KV pages not all back: {in_use}")
        json.dump({"rows": rows, "summary": summary, "wall_s": wall, "failures": failures},
                  open(os.path.join(a.out, "serve-check.json"), "w"), indent=1)
    finally:
        for p in servers:
            p.terminate()
        for p in servers:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    for f in failures:
        print("FAIL:", f)
    print("serve-check:", "PASS" if not failures else f"{len(failures)} failure(s)")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
