#!/usr/bin/env python3
"""Peer for bench/gemm_bench: torch.matmul (cuBLAS through PyTorch) on the same Llama-3-8B shapes, timed
the same way (random bf16 inputs, rotation past 2x L2, warm-up, CUDA events, median; eager calls and a
captured CUDA graph), then, with --ours, runs our binary in the same command and prints one table with
the ratio ours/torch (time; < 1 means ours is faster).

Usage (GPU machine, from the repository root, nothing built there):
  LD_LIBRARY_PATH=build-cuda/bundle:/usr/local/cuda/lib64 \
    python3 bench/gemm_peer.py --ours build-cuda/bin/gemm_bench [--reps 100] [--graph-calls 20] [--rounds 3]
      [--warmup-ms 1000] [--only NAME:M] [--torch-inputs fp32|bf16]

Inputs: both sides draw uniform values in fp32 and round them to bf16 (ours: a hash per element), so
every mantissa bit varies as in real activations and weights. --torch-inputs bf16 draws torch's inputs
with torch.rand in bf16 instead (the earlier peer), whose values have few mantissa bits set; measured
on lm_head M=4096 it made no difference (bench/RESULTS.md).
"""
import argparse
import csv
import io
import statistics
import subprocess
import sys
import time

import torch

LAYERS = [("qo_proj", 4096, 4096), ("gate_up", 4096, 14336), ("down", 14336, 4096), ("lm_head", 4096, 128256)]
MS = [1, 16, 4096]


def uniform(rows, cols, scale, gen, draw_dtype):
    """Uniform values in [-scale, scale), drawn in draw_dtype, returned as bf16."""
    u = torch.rand(rows, cols, device="cuda", dtype=draw_dtype, generator=gen)
    return ((u * 2 - 1) * scale).to(torch.bfloat16)


def time_torch(m, k, n, reps, graph_calls, l2_bytes, warmup_ms, draw_dtype):
    set_bytes = 2 * (m * k + n * k + m * n)
    copies = max(1, -(-2 * l2_bytes // set_bytes))
    gen = torch.Generator(device="cuda").manual_seed(1)
    xs = [uniform(m, k, 1.0, gen, draw_dtype) for _ in range(copies)]
    ws = [uniform(n, k, 0.02, gen, draw_dtype) for _ in range(copies)]
    ys = [torch.empty(m, n, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]

    def call(i):
        c = i % copies
        torch.matmul(xs[c], ws[c].t(), out=ys[c])

    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for i in range(max(10, copies)):
            call(i)
        # Sustained load first (as gemm_bench --warmup-ms): clocks settle before timing.
        t0, i = time.monotonic(), 0
        while time.monotonic() - t0 < warmup_ms / 1000.0:
            for _ in range(4):
                call(i)
                i += 1
            torch.cuda.synchronize()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        eager = []
        for i in range(reps):
            start.record(stream)
            call(i)
            stop.record(stream)
            stop.synchronize()
            eager.append(start.elapsed_time(stop) * 1000.0)
    torch.cuda.synchronize()

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(graph_calls):
            call(i)
    graph.replay()
    torch.cuda.synchronize()
    replays = []
    for _ in range(max(5, reps // 10)):
        start.record()
        graph.replay()
        stop.record()
        stop.synchronize()
        replays.append(start.elapsed_time(stop) * 1000.0 / graph_calls)
    del graph, xs, ws, ys
    torch.cuda.empty_cache()
    return statistics.median(eager), statistics.median(replays)


def run_ours(path, reps, graph_calls, warmup_ms, only=None):
    cmd = [path, "--csv", "--reps", str(reps), "--graph-calls", str(graph_calls), "--warmup-ms", str(warmup_ms)]
    cmd += ["--only", only] if only else []
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = {}
    for r in csv.DictReader(io.StringIO(out)):
        rows[(r["name"], int(r["M"]))] = (float(r["eager_us"]), float(r["graph_us"]))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", help="path of build/bin/gemm_bench, run in the same command")
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--graph-calls", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="torch/ours alternations per shape (median kept)")
    ap.add_argument("--warmup-ms", type=int, default=1000, help="sustained load before each timing (both sides)")
    ap.add_argument("--only", help="one shape, NAME:M (e.g. lm_head:4096)")
    ap.add_argument("--torch-inputs", choices=["fp32", "bf16"], default="fp32",
                    help="dtype torch draws its uniform inputs in (fp32: as ours, every mantissa bit varies)")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.only and args.only not in {f"{name}:{m}" for m in MS for name, _, _ in LAYERS}:
        ap.error(f"--only {args.only}: no such shape")

    draw_dtype = torch.float32 if args.torch_inputs == "fp32" else torch.bfloat16
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 60 << 20)
    print(f"# {props.name}, torch {torch.__version__}; median of {args.reps} calls (eager), "
          f"{args.graph_calls}-call graphs, after {args.warmup_ms} ms of load; per shape torch and ours "
          f"{args.rounds} times in turn, median; torch inputs drawn in {args.torch_inputs}",
          flush=True)

    head = (f"{'layer':8} {'M':>5} {'K':>6} {'N':>6} | {'torch us':>9} {'graph':>8} {'TFLOP/s':>8} {'TB/s':>6}"
            f" | {'ours us':>9} {'graph':>8} {'TFLOP/s':>8} {'TB/s':>6} | {'ours/torch':>10} {'graph':>6}")
    lines = [head, "-" * len(head)]
    for m in MS:
        for name, k, n in LAYERS:
            if args.only and args.only != f"{name}:{m}":
                continue
            # Each shape: torch, then ours in a fresh process right after it, `rounds` times in turn,
            # each side's median over the rounds kept, so that both meet the GPU in the same states
            # (clocks drift under sustained load; ours also times its candidates first), each timing
            # after warmup_ms of the same GEMM so that both see settled clocks.
            runs_t, runs_o = [], []
            for _ in range(args.rounds):
                runs_t.append(time_torch(m, k, n, args.reps, args.graph_calls, l2, args.warmup_ms, draw_dtype))
                if args.ours:
                    rows = run_ours(args.ours, args.reps, args.graph_calls, args.warmup_ms, f"{name}:{m}")
                    runs_o.append(rows.get((name, m)))
            t_eager = statistics.median(r[0] for r in runs_t)
            t_graph = statistics.median(r[1] for r in runs_t)
            ours = {}
            if runs_o and all(r is not None for r in runs_o):
                ours[(name, m)] = (statistics.median(r[0] for r in runs_o), statistics.median(r[1] for r in runs_o))
            flop = 2.0 * m * n * k
            nbytes = 2.0 * (m * k + n * k + m * n)
            line = (f"{name:8} {m:5d} {k:6d} {n:6d} | {t_eager:9.2f} {t_graph:8.2f} {flop / t_graph * 1e-6:8.1f}"
                    f" {nbytes / t_graph * 1e-6:6.2f}")
            if (name, m) in ours:
                o_eager, o_graph = ours[(name, m)]
                line += (f" | {o_eager:9.2f} {o_graph:8.2f} {flop / o_graph * 1e-6:8.1f} {nbytes / o_graph * 1e-6:6.2f}"
                         f" | {o_eager / t_eager:10.3f} {o_graph / t_graph:6.3f}")
            print(line, flush=True, file=sys.stderr)
            lines.append(line)
    print("\n".join(lines))  # the table last (TFLOP/s and TB/s columns are from the graph timings)


if __name__ == "__main__":
    main()
