#!/usr/bin/env python3
"""Whole-model throughput on the GPU: sparseserve's engine (bench/engine_bench.cc, the CUDA backend)
next to HF transformers' generate on the same GGUF weights, in the same run; or, with --load-format
dummy, on made-up weights of a Hugging Face directory's shapes (ours: engine/dummy_weights.h; HF:
from_config's random initialisation, bf16): greedy decoding without EOS runs the same work whatever
the weights.

Both get B sequences of P random prompt tokens and generate G tokens greedily (no EOS stop):
  prefill tok/s = B·P / the time until every sequence has its first token;
  decode tok/s  = the tokens generated while all B sequences decode together / that time (ours:
                  bench/engine_bench.cc, from the last first token until the first sequence is done, so
                  that long prompts prefilled over many steps do not count early starters; HF decodes
                  the batch together: B·(G − 1) / the time after the first token).
HF: AutoModelForCausalLM from the GGUF (dequantized by transformers, bf16, SDPA attention, its default
dynamic cache), generate(max_new_tokens=1) timed for the prefill and generate(max_new_tokens=G) for
both phases (decode = the difference), medians over --repeats after a warm-up.

Usage: engine_bench.py --bin build-cuda/bin/engine_bench --model M.gguf|DIR [--load-format dummy] [--batch 1,16,64]
       [--prompt-tokens 512] [--decode-tokens 128] [--model-config Y --profiles dense,balanced]
Needs torch and transformers (and the gguf package transformers reads GGUF with: put the test venv's
on PYTHONPATH where it is missing). Prints a table; --out DIR also writes engine_bench.json there.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def ours(a, profile):
    cmd = [a.bin, "--model", a.model, "--load-format", a.load_format, "--backend", "cuda", "--batch", a.batch, "--prompt-tokens",
           str(a.prompt_tokens), "--decode-tokens", str(a.decode_tokens), "--repeats", str(a.repeats),
           "--kv-cache-bytes", a.kv_cache_bytes]
    if a.model_config:
        cmd += ["--model-config", a.model_config]
    if profile:
        cmd += ["--profile", profile]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"engine_bench failed: {out.stderr.strip()}")
    return {r["batch"]: r for r in map(json.loads, out.stdout.splitlines())}


def hf(a):
    import torch
    from transformers import AutoModelForCausalLM

    if a.load_format == "dummy":
        from transformers import AutoConfig
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(a.model), dtype=torch.bfloat16).eval()
    else:
        folder, name = os.path.split(os.path.abspath(a.model))
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16).cuda().eval()
    vocab = model.config.vocab_size
    g = torch.Generator(device="cuda").manual_seed(1234)
    rows = {}
    for batch in map(int, a.batch.split(",")):
        def gen(new_tokens):
            ids = torch.randint(100, vocab, (batch, a.prompt_tokens), device="cuda", generator=g)
            mask = torch.ones_like(ids)
            torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.no_grad():
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                               do_sample=False, pad_token_id=0)
            torch.cuda.synchronize()
            return time.perf_counter() - t

        gen(2)  # warm-up
        first = statistics.median(gen(1) for _ in range(a.repeats))
        whole = statistics.median(gen(a.decode_tokens) for _ in range(a.repeats))
        rows[batch] = {"prefill_tok_s": batch * a.prompt_tokens / first,
                       "decode_tok_s": batch * (a.decode_tokens - 1) / max(whole - first, 1e-9)}
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    ap.add_argument("--batch", default="1,16,64")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kv-cache-bytes", default="8GiB")
    ap.add_argument("--model-config", default="")
    ap.add_argument("--profiles", default="", help="comma-separated profiles of ours (default: the default one)")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    mine = {p: ours(a, p) for p in (a.profiles.split(",") if a.profiles else [""])}
    for rows in mine.values():
        for r in rows.values():
            print(json.dumps(r), flush=True)
    peer = hf(a)
    print(f"model {os.path.basename(a.model.rstrip('/'))}{' (dummy weights)' if a.load_format == 'dummy' else ''}, prompt {a.prompt_tokens}, generate {a.decode_tokens}, greedy; "
          f"tok/s (ratio = ours / HF, > 1 = ours faster)")
    print("batch | ours profile | ours prefill | HF prefill | prefill ratio | ours decode | HF decode | decode ratio")
    print("--- | --- | --- | --- | --- | --- | --- | ---")
    table = []
    for profile, rows in mine.items():
        for batch, r in sorted(rows.items()):
            h = peer[batch]
            row = {"batch": batch, "profile": r["profile"], "ours_prefill": r["prefill_tok_s"],
                   "hf_prefill": h["prefill_tok_s"], "ours_decode": r["decode_tok_s"], "hf_decode": h["decode_tok_s"]}
            table.append(row)
            print(f"{batch} | {row['profile']} | {row['ours_prefill']:.0f} | {row['hf_prefill']:.0f} | "
                  f"{row['ours_prefill'] / row['hf_prefill']:.2f}x | {row['ours_decode']:.0f} | {row['hf_decode']:.0f} | "
                  f"{row['ours_decode'] / row['hf_decode']:.2f}x")
    if a.out:
        json.dump(table, open(os.path.join(a.out, "engine_bench.json"), "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
