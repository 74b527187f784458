#!/usr/bin/env python3
"""Attention benchmark: sparseserve's paged kernels against PyTorch SDPA, same shapes, same run.

Ours are timed by the C++ binary bench/attention_bench.cu (built on the development machine, run
here); the peers are torch.nn.functional.scaled_dot_product_attention with the cuDNN and
FlashAttention-2 backends. Shapes follow Llama-3-8B attention (32 query heads, 8 KV heads, d=128):

  prefill, dense causal, 4K / 16K / 64K tokens          TFLOP/s (causal FLOPs = 4·L²·d·heads/2)
  prefill, half the KV heads streaming (sink 128, local 4096), 64K: time and speed-up over dense
  prefill, every head's XAttention block mask estimated on the GPU (block 128, stride 16,
  threshold 1, 0.9 and 0.5) and attended, 16K and 64K: time next to dense, the estimate's share
  decode, dense, batch 1 and 16, 8K / 32K / 128K context          TB/s of K/V read
  decode at 128K, half the KV heads streaming, retrieval heads reading a 4096-token selection made
  by page_select on the GPU (timed alone, and with the selection in the same graph)
  a chunk of 64 / 512 queries after 8K / 32K keys (a prompt's tail after a cached prefix), batch 1
  and 8: ours with and without the key split (PrefillConfig::min_split_keys 0); the peers with a
  lower-right causal mask (torch.nn.attention.bias.causal_lower_right) from CUDA graphs

Timing everywhere: CUDA events after warm-up, median of --iters, inputs rotated across copies when
one set fits in L2, random data. Decode (ours and SDPA) is timed as CUDA graph replays: an eager
launch costs 30-55 us here, more than a small decode step. Each decode case runs twice: one call per
graph (the kernel with its launch and the events around it), and 8 calls per graph on the rotation
sets in turn, as an engine step's graph holds one call per layer (time per call). The
device-to-device copy bandwidth is measured in the same run as the memory-bound limit, and for each
dense decode case the paged read ceiling (attention_bench --read-ceiling: the same pages read
without any math) with the pool's pages shuffled, as a long-running server's pool is, and in list
order, as a fresh pool hands them out and as SDPA's contiguous cache lies.

Usage. Build on the development machine (ninja -C build-attn attention_bench, after
cmake -S . -B build-attn -G Ninja -DSPARSESERVE_CUDA=ON), copy the binary and the libraries it needs
(../shared/tools/bundle-libs.sh LIBDIR BINARY) with the tree, then on the GPU machine:
  LD_LIBRARY_PATH=LIBDIR:/usr/local/cuda/lib64 \
    python3 bench/attention_bench.py --bin PATH/attention_bench --out "$OUT"
Options: --quick (small shapes, few iterations: a smoke run), --only prefill|decode|sparse|xattn|chunk.
Full log and JSON go to --out; the table is printed last.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

HQ, HKV, D, PAGE = 32, 8, 128, 64
L2_BYTES = 60e6


# Our prefill kernels, the default first (wgmma on the H200; mma.sync for comparison).
PREFILL_KERNELS = ["wgmma", "mma"]
RESELECT = 4  # decode: page selection every 4 steps (the sparse decode case)
LAYERS = 8  # decode: calls per graph in the engine-step timing


def log(out_dir, msg):
    print(msg, flush=True)
    with open(os.path.join(out_dir, "attention_bench.log"), "a") as f:
        f.write(msg + "\n")


def timed_ms(fn, rotate, warmup, iters):
    """Median and min milliseconds of fn(i) (i = rotation index), CUDA events around each call."""
    for i in range(warmup):
        fn(i % rotate)
    torch.cuda.synchronize()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for i, (a, b) in enumerate(ev):
        a.record()
        fn(i % rotate)
        b.record()
    torch.cuda.synchronize()
    ms = sorted(a.elapsed_time(b) for a, b in ev)
    return ms[len(ms) // 2], ms[0]


def copy_bandwidth(iters):
    """Device-to-device copy, TB/s counting bytes read plus written."""
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    med, _ = timed_ms(lambda i: dst.copy_(src), 1, 3, iters)
    del src, dst
    return 2 * n / (med * 1e-3) / 1e12


def sdpa_call(backend, q, k, v, causal):
    """Runs SDPA on one backend with native GQA; falls back to K/V expanded to every query head
    when the backend refuses enable_gqa. Returns (callable, note)."""
    group = q.shape[1] // k.shape[1]

    def native():
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)

    try:
        native()
        torch.cuda.synchronize()
        return native, "gqa"
    except RuntimeError:
        pass
    ke = k.repeat_interleave(group, dim=1)
    ve = v.repeat_interleave(group, dim=1)

    def expanded():
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, ke, ve, is_causal=causal)

    expanded()
    torch.cuda.synchronize()
    return expanded, "expanded K/V"


def sdpa_prefill(backend, L, iters, warmup):
    set_bytes = L * (HQ + 2 * HKV) * D * 2
    rotate = max(1, min(8, math.ceil(4 * L2_BYTES / set_bytes)))
    calls, note = [], ""
    for _ in range(rotate):
        q = torch.randn(1, HQ, L, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, HKV, L, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(1, HKV, L, D, device="cuda", dtype=torch.bfloat16)
        fn, note = sdpa_call(backend, q, k, v, True)
        calls.append(fn)
    med, mn = timed_ms(lambda i: calls[i](), rotate, warmup, iters)
    return med, mn, note


def sdpa_decode(backend, B, L, iters, warmup, calls=1):
    """SDPA decode step (one query token per sequence), replayed from a CUDA graph. calls > 1: each
    graph holds that many steps on the rotation sets in turn (as an engine step holds one per layer);
    times are per call."""
    kv_bytes = 2 * B * HKV * L * D * 2
    rotate = max(1, min(8, math.ceil(4 * L2_BYTES / kv_bytes)))
    fns, sets, note = [], [], ""
    for _ in range(rotate):
        q = torch.randn(B, HQ, 1, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(B, HKV, L, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(B, HKV, L, D, device="cuda", dtype=torch.bfloat16)
        fn, note = sdpa_call(backend, q, k, v, False)
        fns.append(fn)
        sets.append((q, k, v))
    med, mn = graph_ms(fns, iters, warmup, calls)
    return med, mn, note + f", graph of {calls}"


def graph_ms(fns, iters, warmup, calls=1):
    """Median and min milliseconds per call of CUDA graph replays: graph i holds `calls` calls,
    fns[i], fns[i + 1], ... (wrapping around), as an engine step's graph holds one call per layer."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for fn in fns:
            for _ in range(2):
                fn()
    torch.cuda.current_stream().wait_stream(s)
    graphs = []
    for i in range(len(fns)):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for j in range(calls):
                fns[(i + j) % len(fns)]()
        graphs.append(g)
    med, mn = timed_ms(lambda i: graphs[i].replay(), len(fns), warmup, iters)
    return med / calls, mn / calls


def sdpa_chunk(backend, B, L, C, iters, warmup):
    """SDPA for the last C queries of L-token sequences over all L keys (causal, lower-right aligned),
    from CUDA graphs. Native GQA when the backend takes it with the mask, else K/V expanded."""
    kv_bytes = 2 * B * HKV * L * D * 2
    rotate = max(1, min(8, math.ceil(4 * L2_BYTES / kv_bytes)))
    fns, note = [], ""
    for _ in range(rotate):
        q = torch.randn(B, HQ, C, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(B, HKV, L, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(B, HKV, L, D, device="cuda", dtype=torch.bfloat16)
        mask = causal_lower_right(C, L)

        def native(q=q, k=k, v=v, mask=mask):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

        try:
            native()
            torch.cuda.synchronize()
            fns.append(native)
            note = "gqa"
            continue
        except (RuntimeError, TypeError):
            pass
        ke, ve = k.repeat_interleave(HQ // HKV, dim=1), v.repeat_interleave(HQ // HKV, dim=1)

        def expanded(q=q, ke=ke, ve=ve, mask=mask):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, ke, ve, attn_mask=mask)

        expanded()
        torch.cuda.synchronize()
        fns.append(expanded)
        note = "expanded K/V"
    med, mn = graph_ms(fns, iters, warmup)
    return med, mn, note + ", graph"


def ours(binary, out_dir, args):
    cmd = [binary] + [str(a) for a in args]
    log(out_dir, "$ " + " ".join(cmd))
    p = subprocess.run(cmd, capture_output=True, text=True)
    log(out_dir, p.stdout.strip() + (("\n" + p.stderr.strip()) if p.stderr.strip() else ""))
    if p.returncode != 0:
        return {"error": f"rc={p.returncode}: {p.stderr.strip()[-300:]}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def peer(out_dir, what, fn):
    try:
        r = fn()
        torch.cuda.empty_cache()
        return r
    except Exception as e:  # a missing backend is a result, not a crash
        log(out_dir, f"{what}: {type(e).__name__}: {e}")
        torch.cuda.empty_cache()
        return None


def fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.environ.get("ATTN_BENCH_BIN", "build-attn/bin/attention_bench"))
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=["prefill", "decode", "sparse", "xattn", "chunk"])
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    it, wu = (5, 2) if a.quick else (a.iters, a.warmup)
    prefill_lens = [4096] if a.quick else [4096, 16384, 65536]
    sparse_prefill_len = 16384 if a.quick else 65536
    decode_lens = [8192] if a.quick else [8192, 32768, 131072]
    sparse_decode_len = 32768 if a.quick else 131072
    want = lambda part: a.only is None or a.only == part  # noqa: E731

    props = torch.cuda.get_device_properties(0)
    log(a.out, f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {props.name}, {props.multi_processor_count} SMs, "
               f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    copy_tbps = copy_bandwidth(it)
    log(a.out, f"device-to-device copy: {copy_tbps:.2f} TB/s (read + write)")
    results, rows = [], []

    common = ["--q-heads", HQ, "--kv-heads", HKV, "--dim", D, "--page", PAGE, "--iters", it, "--warmup", wu]
    dense_prefill_ms = {}
    if want("prefill"):
        for L in prefill_lens:
            flops = 4 * L * L * D * HQ / 2
            c = peer(a.out, f"cuDNN prefill {L}", lambda: sdpa_prefill(SDPBackend.CUDNN_ATTENTION, L, it, wu))
            f2 = peer(a.out, f"FA2 prefill {L}", lambda: sdpa_prefill(SDPBackend.FLASH_ATTENTION, L, it, wu))
            tf = lambda ms: None if ms is None else flops / (ms * 1e-3) / 1e12  # noqa: E731
            for kernel in PREFILL_KERNELS:
                o = ours(a.bin, a.out, ["--op", "prefill", "--seq", L, "--kernel", kernel] + common)
                om = o.get("median_ms")
                if kernel == PREFILL_KERNELS[0]:
                    dense_prefill_ms[L] = om
                rows.append([f"prefill dense L={L} ({kernel})", om, c and c[0], f2 and f2[0], "TFLOP/s", tf(om),
                             tf(c and c[0]), tf(f2 and f2[0])])
                results.append({"case": "prefill_dense", "L": L, "kernel": kernel, "ours": o, "cudnn": c, "fa2": f2})
    if want("sparse") or want("prefill"):
        L = sparse_prefill_len
        flops = 4 * L * L * D * HQ / 2
        dense = dense_prefill_ms.get(L)
        cudnn_dense = None
        for r in results:
            if r["case"] == "prefill_dense" and r["L"] == L and r.get("cudnn"):
                cudnn_dense = r["cudnn"][0]
        for kernel in PREFILL_KERNELS:
            o = ours(a.bin, a.out, ["--op", "prefill", "--seq", L, "--streaming-kv-heads", HKV // 2, "--sink", 128,
                                    "--local", 4096, "--kernel", kernel] + common)
            om = o.get("median_ms")
            rows.append([f"prefill 50% streaming L={L} ({kernel})", om, cudnn_dense, None, "dense-equiv TFLOP/s",
                         None if om is None else flops / (om * 1e-3) / 1e12, None, None,
                         f"vs our dense: {fmt(dense and om and dense / om, '.2f')}x"])
            results.append({"case": "prefill_sparse", "L": L, "kernel": kernel, "ours": o})
    if want("xattn") or want("prefill"):
        # Dynamic prefill sparsity: every head's block mask estimated (XAttentionSelect, block 128,
        # stride 16, XAttention's Llama settings) and the prefill over it, in one call, against the
        # dense cuDNN prefill. Random inputs spread attention evenly, so the threshold sets the density.
        for L in [16384] if a.quick else [16384, 65536]:
            flops = 4 * L * L * D * HQ / 2
            dense, cudnn_dense = dense_prefill_ms.get(L), None
            for r in results:
                if r["case"] == "prefill_dense" and r["L"] == L and r.get("cudnn"):
                    cudnn_dense = r["cudnn"][0]
            for threshold in [1.0, 0.9, 0.5]:
                o = ours(a.bin, a.out, ["--op", "prefill", "--seq", L, "--xattn-threshold", threshold,
                                        "--xattn-block", 128, "--xattn-stride", 16] + common)
                om, xm = o.get("median_ms"), o.get("xattn_ms")
                rows.append([f"prefill XAttention t={threshold} L={L}, density {fmt(o.get('density'), '.3f')}", om,
                             cudnn_dense, None, "dense-equiv TFLOP/s",
                             None if om is None else flops / (om * 1e-3) / 1e12, None, None,
                             f"vs our dense: {fmt(dense and om and dense / om, '.2f')}x"])
                rows.append([f"  its estimate alone (share {fmt(om and xm and xm / om, '.2f')})", xm, None, None,
                             "TFLOP/s", o.get("xattn_tflops"), None, None])
                results.append({"case": "prefill_xattn", "L": L, "threshold": threshold, "ours": o})
    if want("chunk") or want("prefill"):
        # A prompt's tail after a cached prefix (or the last chunk of a long one): few query tiles
        # over many keys, where the key split fills the GPU (PrefillConfig::min_split_keys).
        for L, C, B in [(8192, 64, 1)] if a.quick else [(8192, 64, 1), (32768, 64, 1), (8192, 512, 1), (8192, 64, 8)]:
            flops = 4 * B * D * HQ * (L * (L + 1) / 2 - (L - C) * (L - C + 1) / 2)
            c = peer(a.out, f"cuDNN chunk {C} L={L} B={B}",
                     lambda: sdpa_chunk(SDPBackend.CUDNN_ATTENTION, B, L, C, it, wu))
            f2 = peer(a.out, f"FA2 chunk {C} L={L} B={B}",
                      lambda: sdpa_chunk(SDPBackend.FLASH_ATTENTION, B, L, C, it, wu))
            tf = lambda ms: None if ms is None else flops / (ms * 1e-3) / 1e12  # noqa: E731
            for split in [-1, 0]:
                o = ours(a.bin, a.out, ["--op", "prefill", "--seq", L, "--chunk", C, "--batch", B,
                                        "--min-split-keys", split] + common)
                om = o.get("median_ms")
                how = f"{o.get('ctas')} CTAs, {o.get('merges')} split tiles" if split < 0 else "no split"
                rows.append([f"prefill chunk {C} after {L - C}, B={B} ({how})", om, c and c[0], f2 and f2[0], "TFLOP/s",
                             tf(om), tf(c and c[0]), tf(f2 and f2[0])])
                results.append({"case": "prefill_chunk", "L": L, "C": C, "B": B, "split": split, "ours": o, "cudnn": c,
                                "fa2": f2})
    dense_decode_ms = {}
    ceilings = []  # [case, ours, ceiling, ours on sequential pages, its ceiling, cuDNN] TB/s
    # Decode graphs hold one call (a lone kernel, its launch and events included) or LAYERS calls on
    # the rotation sets in turn (an engine step's graph, one call per layer): times are per call.
    graph_calls = [1] if a.quick else [1, LAYERS]
    tag = lambda gc: "" if gc == 1 else f", {gc} per graph"  # noqa: E731
    if want("decode"):
        for gc in graph_calls:
            for B in [1, 16]:
                for L in decode_lens:
                    kv = 2 * B * HKV * L * D * 2
                    o = ours(a.bin, a.out, ["--op", "decode", "--seq", L, "--batch", B, "--graph-calls", gc,
                                            "--read-ceiling", 1] + common)
                    c = peer(a.out, f"cuDNN decode B={B} L={L}",
                             lambda: sdpa_decode(SDPBackend.CUDNN_ATTENTION, B, L, it, wu, gc))
                    f2 = peer(a.out, f"FA2 decode B={B} L={L}",
                              lambda: sdpa_decode(SDPBackend.FLASH_ATTENTION, B, L, it, wu, gc))
                    om = o.get("median_ms")
                    dense_decode_ms[(B, L, gc)] = om
                    tb = lambda ms: None if ms is None else kv / (ms * 1e-3) / 1e12  # noqa: E731
                    rows.append([f"decode dense B={B} L={L}{tag(gc)}", om, c and c[0], f2 and f2[0], "TB/s KV", tb(om),
                                 tb(c and c[0]), tb(f2 and f2[0])])
                    seq = {}
                    if gc == graph_calls[-1]:  # the engine-step timing: also with pages in list order
                        seq = ours(a.bin, a.out, ["--op", "decode", "--seq", L, "--batch", B, "--graph-calls", gc,
                                                  "--read-ceiling", 1, "--page-order", "sequential"] + common)
                        ceilings.append([f"B={B} L={L}{tag(gc)}", tb(om), o.get("ceiling_tbps"), tb(seq.get("median_ms")),
                                         seq.get("ceiling_tbps"), tb(c and c[0])])
                    results.append({"case": "decode_dense", "B": B, "L": L, "graph_calls": gc, "ours": o, "cudnn": c,
                                    "fa2": f2, "ours_sequential_pages": seq})
    if want("sparse") or want("decode"):
        L = sparse_decode_len
        for gc in graph_calls:
            for B in [1, 16]:
                o = ours(a.bin, a.out, ["--op", "decode", "--seq", L, "--batch", B, "--streaming-kv-heads", HKV // 2,
                                        "--sink", 128, "--local", 4096, "--budget", 4096, "--select", "gpu",
                                        "--graph-calls", gc] + common)
                om = o.get("median_ms")
                both = o.get("select_decode_median_ms")
                dense = dense_decode_ms.get((B, L, gc))
                rows.append([f"decode sparse B={B} L={L}{tag(gc)} (attention only)", om, None, None, "TB/s KV read",
                             o.get("tbps"), None, None, f"vs our dense: {fmt(dense and om and dense / om, '.2f')}x"])
                rows.append([f"decode sparse B={B} L={L}{tag(gc)} (page_select + attention)", both, None, None,
                             "select ms", o.get("select_median_ms"), None, None,
                             f"vs our dense: {fmt(dense and both and dense / both, '.2f')}x"])
                # Reselecting every RESELECT steps (the profile's reselect_interval): one step in
                # RESELECT runs page_select and the attention in one graph (the row above), the others
                # the attention alone, so a step carries one graph launch as the dense step does. The
                # selection's share is what it adds to that step. (Sessions up to 9 added a
                # RESELECT-th of the selection timed in a graph of its own: om + sel / RESELECT.)
                step = None if (om is None or both is None) else (both + (RESELECT - 1) * om) / RESELECT
                added = None if step is None else (both - om) / RESELECT
                rows.append([f"decode sparse B={B} L={L}{tag(gc)} (reselect every {RESELECT} steps)", step, None,
                             None, "selection share", None if step is None else added / step, None, None,
                             f"vs our dense: {fmt(dense and step and dense / step, '.2f')}x"])
                results.append({"case": "decode_sparse", "B": B, "L": L, "graph_calls": gc, "ours": o})

    with open(os.path.join(a.out, "attention_bench.json"), "w") as f:
        json.dump({"device": props.name, "torch": torch.__version__, "copy_tbps": copy_tbps, "results": results}, f,
                  indent=1)
    hdr = ["case", "ours ms", "cuDNN ms", "FA2 ms", "metric", "ours", "cuDNN", "FA2", "ours vs cuDNN", "ours vs FA2"]
    lines = [" | ".join(hdr), " | ".join("---" for _ in hdr)]
    for r in rows:
        case, om, cm, fm, metric, ov, cv, fv = r[:8]
        extra = r[8] if len(r) > 8 else None
        ratio_c = fmt(cm / om, ".2f") + "x" if (om and cm) else "-"
        ratio_f = fmt(fm / om, ".2f") + "x" if (om and fm) else "-"
        if extra:
            ratio_c, ratio_f = extra, "-"
        lines.append(" | ".join([case, fmt(om), fmt(cm), fmt(fm), metric, fmt(ov, ".1f" if "TFLOP" in metric else ".3f"),
                                 fmt(cv, ".1f" if "TFLOP" in metric else ".3f"),
                                 fmt(fv, ".1f" if "TFLOP" in metric else ".3f"), ratio_c, ratio_f]))
    lines.append(f"(copy limit {copy_tbps:.2f} TB/s read+write; ratios are peer time / our time: > 1 means ours is faster)")
    if ceilings:
        ratio = lambda x, y: fmt(x / y if (x and y) else None, ".3f")  # noqa: E731
        hdr = ["dense decode, TB/s of K/V", "ours", "paged read ceiling", "ours / ceiling", "ours, pages in order",
               "ceiling, pages in order", "ours / ceiling", "cuDNN (contiguous)", "cuDNN / ceiling in order"]
        lines += ["", " | ".join(hdr), " | ".join("---" for _ in hdr)]
        for case, ov, cl, sv, sl, cv in ceilings:
            lines.append(" | ".join([case, fmt(ov), fmt(cl), ratio(ov, cl), fmt(sv), fmt(sl), ratio(sv, sl), fmt(cv),
                                     ratio(cv, sl)]))
        lines.append("(ceiling: the same K/V pages copied to shared memory without any math, attention_bench "
                     "--read-ceiling; shuffled pool pages unless 'in order')")
    log(a.out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
