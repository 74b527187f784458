#!/usr/bin/env python3
"""Load generator for a running sparseserve (or any OpenAI-compatible) server, like `vllm bench serve`.

Sends streaming /v1/completions requests with prompts of a given token length (random words from a
fixed vocabulary, seeded) either at a Poisson request rate or with a fixed number of concurrent
clients, and reports TTFT, TPOT (time per output token after the first), ITL (gaps between
streamed chunks) percentiles, request throughput and token throughput. Bounded: --num-prompts
requests, then it stops; loopback targets only.

  python3 bench/load_bench.py --base-url http://127.0.0.1:8000 --model smollm2-135m-instruct \
      --num-prompts 64 --concurrency 8 --input-len 256 --output-len 64 [--request-rate 2]
"""
import argparse
import asyncio
import json
import random
import statistics
import time
from urllib.parse import urlparse

import httpx

WORDS = ("time year people way day man thing woman life child world school state family student group "
         "country problem hand part place case week company system program question work government "
         "number night point home water room mother area money story fact month lot right study book "
         "eye job word business issue side kind head house service friend father power hour game line").split()


def percentiles(xs, ps=(50, 90, 99)):
    if not xs:
        return {f"p{p}": float("nan") for p in ps} | {"mean": float("nan")}
    s = sorted(xs)
    out = {f"p{p}": s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] for p in ps}
    out["mean"] = statistics.fmean(s)
    return out


async def tokenize_len(client, base, model, text):
    r = await client.post(f"{base}/tokenize", json={"model": model, "prompt": text})
    r.raise_for_status()
    return r.json()["count"]


async def make_prompt(client, base, model, n_tokens, rng):
    words = [rng.choice(WORDS) for _ in range(n_tokens)]
    # One word is about one token for this vocabulary; trim with the server's tokenizer.
    text = " ".join(words)
    while await tokenize_len(client, base, model, text) > n_tokens:
        words = words[:-4]
        text = " ".join(words)
    return text


async def one_request(client, base, model, prompt, output_len):
    body = {"model": model, "prompt": prompt, "max_tokens": output_len, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    chunks, first, last, n_out = [], None, None, 0
    async with client.stream("POST", f"{base}/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            msg = json.loads(line[6:])
            now = time.perf_counter()
            if msg.get("usage"):
                n_out = msg["usage"]["completion_tokens"]
            if msg.get("choices") and msg["choices"][0].get("text"):
                if first is None:
                    first = now
                else:
                    chunks.append(now - last)
                last = now
    t1 = time.perf_counter()
    ttft = (first or t1) - t0
    tpot = (t1 - (first or t1)) / max(1, n_out - 1)
    return {"ttft": ttft, "tpot": tpot, "itl": chunks, "e2e": t1 - t0, "out": n_out}


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--num-prompts", type=int, default=32)
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8, help="clients in flight (ignored with --request-rate)")
    ap.add_argument("--request-rate", type=float, default=0.0, help="Poisson arrivals per second (0: use --concurrency)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the summary here")
    a = ap.parse_args()
    host = urlparse(a.base_url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("load_bench only targets loopback servers")
    rng = random.Random(a.seed)
    limits = httpx.Limits(max_connections=max(a.concurrency, 64))
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        prompts = [await make_prompt(client, a.base_url, a.model, a.input_len, rng) for _ in range(a.num_prompts)]
        results = []
        t0 = time.perf_counter()
        if a.request_rate > 0:
            tasks = []
            for p in prompts:
                tasks.append(asyncio.create_task(one_request(client, a.base_url, a.model, p, a.output_len)))
                await asyncio.sleep(rng.expovariate(a.request_rate))
            results = await asyncio.gather(*tasks)
        else:
            queue = list(prompts)

            async def worker():
                while queue:
                    p = queue.pop()
                    results.append(await one_request(client, a.base_url, a.model, p, a.output_len))
            await asyncio.gather(*(worker() for _ in range(a.concurrency)))
        wall = time.perf_counter() - t0
    out_tokens = sum(r["out"] for r in results)
    summary = {
        "requests": len(results), "wall_s": wall,
        "request_throughput_rps": len(results) / wall,
        "output_token_throughput_tps": out_tokens / wall,
        "total_token_throughput_tps": (out_tokens + a.input_len * len(results)) / wall,
        "ttft_s": percentiles([r["ttft"] for r in results]),
        "tpot_s": percentiles([r["tpot"] for r in results]),
        "itl_s": percentiles([x for r in results for x in r["itl"]]),
        "e2e_s": percentiles([r["e2e"] for r in results]),
        "config": vars(a),
    }
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=2)
    mode = f"rate {a.request_rate}/s" if a.request_rate > 0 else f"concurrency {a.concurrency}"
    print(f"| {mode} | {a.num_prompts} x ({a.input_len} in, {a.output_len} out) | "
          f"{summary['request_throughput_rps']:.2f} req/s | {summary['output_token_throughput_tps']:.1f} out tok/s | "
          f"TTFT p50 {summary['ttft_s']['p50']*1e3:.0f} / p99 {summary['ttft_s']['p99']*1e3:.0f} ms | "
          f"TPOT p50 {summary['tpot_s']['p50']*1e3:.1f} ms | ITL p50 {summary['itl_s']['p50']*1e3:.1f} / "
          f"p99 {summary['itl_s']['p99']*1e3:.1f} ms |")


if __name__ == "__main__":
    asyncio.run(main())
